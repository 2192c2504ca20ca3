using Fiddler.Kernels.Runtime;
using Xunit;

namespace Fiddler.Tests.Kernels.Runtime;

public class AllocatorConfigTests
{
    [Fact]
    public void ApplyDefault_ReachesTheNativeEnvironment_AndKeepsAUsersValue()
    {
        string? before = Environment.GetEnvironmentVariable(AllocatorConfig.Variable);
        string? newer = Environment.GetEnvironmentVariable(AllocatorConfig.NewVariable);
        string applied = AllocatorConfig.ApplyDefault();
        if (!string.IsNullOrEmpty(before)) Assert.Equal(before, applied); // the user's setting stands
        else if (!string.IsNullOrEmpty(newer)) Assert.Equal(newer, applied);
        else
        {
            Assert.Equal(AllocatorConfig.Default, applied);
            // What libtorch's getenv will read, not only .NET's copy of the environment (also when it was set empty).
            Assert.Equal(applied, AllocatorConfig.NativeValue(AllocatorConfig.Variable));
        }
        Assert.Equal(applied, AllocatorConfig.ApplyDefault()); // idempotent
    }
}
