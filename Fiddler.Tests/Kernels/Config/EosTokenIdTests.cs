using System.Text.Json;
using Fiddler.Kernels.Config;
using Xunit;

namespace Fiddler.Tests.Kernels.Config;

public class EosTokenIdTests
{
    [Theory]
    [InlineData("2.5")]
    [InlineData("99999999999")]
    [InlineData("[2, \"x\"]")]
    [InlineData("\"2\"")]
    [InlineData("{}")]
    public void EosTokenIds_NotIntegers_ThrowModelConfigExceptionNamingField(string json)
    {
        var config = MixtralConfig.Mixtral8x7B with { EosTokenIdRaw = JsonDocument.Parse(json).RootElement };
        var e = Assert.Throws<ModelConfigException>(() => config.Validate());
        Assert.Contains("eos_token_id", e.Message);
    }
}
