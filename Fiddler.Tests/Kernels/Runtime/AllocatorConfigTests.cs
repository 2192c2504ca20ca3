using Fiddler.Kernels.Runtime;
using Xunit;

namespace Fiddler.Tests.Kernels.Runtime;

public class AllocatorConfigTests
{
    [Fact]
    public void ApplyDefault_ReachesTheNativeEnvironment_AndKeepsAUsersValue()
    {
        string? before = Environment.GetEnvironmentVariable(AllocatorConfig.Variable);
        string applied = AllocatorConfig.ApplyDefault();
        if (string.IsNullOrEmpty(before)) Assert.Equal(AllocatorConfig.Default, applied);
        else Assert.Equal(before, applied); // the user's setting stands
        // What libtorch's getenv will read, not only .NET's copy of the environment.
        Assert.Equal(applied, AllocatorConfig.NativeValue(AllocatorConfig.Variable));
        Assert.Equal(applied, AllocatorConfig.ApplyDefault()); // idempotent
    }
}
