using Fiddler.Kernels.Cuda;
using Xunit;

namespace Fiddler.Tests.Kernels.Cuda;

/// <summary>Where libcudart is looked for, and loading from explicit candidates. No GPU or libcudart needed.</summary>
public sealed class CudaLibraryResolverTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("fiddler-cudart-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    private string Touch(string relative)
    {
        string path = Path.Combine(_root, relative);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllBytes(path, []);
        return path;
    }

    [Fact]
    public void Candidates_ExplicitThenMappedThenSonamesThenFilesNextToTorch()
    {
        string torchLib = Path.Combine(_root, "site-packages", "torch", "lib");
        Directory.CreateDirectory(torchLib);
        string inTorch = Touch("site-packages/torch/lib/libcudart-1a2b3c4d.so.12");
        string runtime = Touch("site-packages/nvidia/cuda_runtime/lib/libcudart.so.12");
        string cu13 = Touch("site-packages/nvidia/cu13/lib/libcudart.so.13");
        Touch("site-packages/nvidia/cublas/lib/libcublas.so.12");
        Touch("site-packages/torch/lib/libcudart_static.a");

        var list = CudaLibraryResolver.Candidates("/opt/x/libcudart.so.13",
            ["/usr/lib/libc.so.6", "/venv/nvidia/cu13/lib/libcudart.so.13", "/venv/torch/lib/libtorch_cuda.so"], [torchLib]);

        Assert.Equal(["/opt/x/libcudart.so.13", "/venv/nvidia/cu13/lib/libcudart.so.13", "libcudart.so.13", "libcudart.so.12", "libcudart.so",
            inTorch, runtime, cu13], list);
    }

    [Fact]
    public void Candidates_NothingKnown_OnlySonames() =>
        Assert.Equal(CudaLibraryResolver.Sonames, CudaLibraryResolver.Candidates(null, [], [Path.Combine(_root, "missing")]));

    [Fact]
    public void FilesNextToTorch_NewestSonameFirst()
    {
        string torchLib = Path.Combine(_root, "sp", "torch", "lib");
        Directory.CreateDirectory(torchLib);
        string so = Touch("sp/nvidia/cuda_runtime/lib/libcudart.so");
        string so12 = Touch("sp/nvidia/cuda_runtime/lib/libcudart.so.12");
        Assert.Equal([so12, so], CudaLibraryResolver.FilesNextToTorch(torchLib));
    }

    [Theory]
    [InlineData("libcudart.so", true)]
    [InlineData("libcudart.so.13", true)]
    [InlineData("libcudart-9f8e7d6c.so.12", true)]
    [InlineData("libcudart_static.a", false)]
    [InlineData("libcudnn.so.9", false)]
    public void IsCudartFileName(string name, bool expected) => Assert.Equal(expected, CudaLibraryResolver.IsCudartFileName(name));

    [Fact]
    public void ProcessMaps_Parse_PathsWithSpacesAndAnonymousMappings()
    {
        const string maps = "7f0000000000-7f0000001000 r-xp 00000000 08:01 42 /usr/lib/libcudart.so.13\n" +
                            "7f0000001000-7f0000002000 rw-p 00000000 00:00 0 \n" +
                            "7f0000002000-7f0000003000 r--p 00000000 00:00 0 [heap]\n" +
                            "7f0000003000-7f0000004000 r--p 00000000 08:01 43 /tmp/a dir/lib x.so\n";
        var entries = ProcessMaps.Parse(maps).ToList();
        Assert.Equal(2, entries.Count);
        Assert.Equal((0x7f0000000000UL, 0x7f0000001000UL, "/usr/lib/libcudart.so.13"), entries[0]);
        Assert.Equal("/tmp/a dir/lib x.so", entries[1].Path);
    }

    [Fact]
    public void ProcessMaps_ThisProcess_FindsTheLibraryOfAnExport()
    {
        // Linux only, as the project: the .NET runtime itself is a mapped shared object with exports.
        IntPtr libc = System.Runtime.InteropServices.NativeLibrary.Load("libc.so.6");
        IntPtr getpid = System.Runtime.InteropServices.NativeLibrary.GetExport(libc, "getpid");
        string? file = ProcessMaps.FileAt(getpid);
        Assert.NotNull(file);
        Assert.StartsWith("libc", Path.GetFileName(file));
        Assert.Contains(file, ProcessMaps.MappedFiles());
    }

    [Fact]
    public void TryLoad_MissingFiles_NullAndReasonNamesEach()
    {
        var lib = CudaLibrary.TryLoad(["/nonexistent/libcudart.so.13", "libcudart-not-here.so.99"], out string reason);
        Assert.Null(lib);
        Assert.Contains("/nonexistent/libcudart.so.13: not loadable", reason);
        Assert.Contains("libcudart-not-here.so.99: not loadable", reason);
    }

    [Fact]
    public void TryLoad_LibraryWithoutCudaExports_NullAndReasonNamesMissingFunctions()
    {
        var lib = CudaLibrary.TryLoad(["libc.so.6"], out string reason);
        Assert.Null(lib);
        Assert.Contains("libc.so.6: lacks cudaGetDeviceCount", reason);
        Assert.Contains("cudaMemcpyAsync", reason);
    }
}
