using System.CommandLine;

namespace Fiddler.Host.Cli;

/// <summary>
/// The <c>fiddler</c> command line, callable in-process (Program.cs and the tests). Every error a user can cause,
/// whether the parser finds it or a command's action throws it, becomes one "fiddler: error: ..." line on stderr and
/// exit code 2; System.CommandLine's own exception handler (stack trace, exit code 1) is off so they reach
/// <see cref="CliErrors"/>. Anything else is a bug: printed with its stack trace, exit code 1.
/// </summary>
public static class FiddlerCli
{
    public const int UserErrorExitCode = 2;
    public const int InternalErrorExitCode = 1;

    public static RootCommand CreateRoot()
    {
        var root = new RootCommand("Fiddler.NET: Mixture-of-Experts inference across GPU and CPU");
        root.Add(GenerateCommand.Create());
        root.Add(VerifyCommand.Create());
        root.Add(BenchDecodeCommand.Create());
        root.Add(BenchCpuExpertCommand.Create());
        root.Add(CudaSelfTestCommand.Create());
        root.Add(BenchCommand.Create());
        root.Add(ProfileCommand.Create());
        root.Add(CalibrateCommand.Create());
        root.Add(Serving.ServeCommand.Create());
        root.Add(LoadgenCommand.Create());
        return root;
    }

    public static int Run(string[] args)
    {
        try
        {
            return CliErrors.Run(() =>
            {
                Fiddler.Kernels.Experts.CpuKernelTuning.CheckEnvironment();
                Fiddler.Kernels.Runtime.HugePages.CheckEnvironment();
                var parsed = CreateRoot().Parse(args);
                if (parsed.Errors.Count > 0)
                {
                    foreach (var error in parsed.Errors) Console.Error.WriteLine($"fiddler: error: {CliErrors.ParseError(error.Message)}");
                    return UserErrorExitCode;
                }
                return parsed.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
            });
        }
        catch (Exception e) when (!CliErrors.IsUserError(e))
        {
            // A bug, not a user error: the whole exception (as System.CommandLine's default handler printed it).
            Console.Error.WriteLine($"fiddler: internal error: {e}");
            return InternalErrorExitCode;
        }
    }
}
