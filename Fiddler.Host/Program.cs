using System.CommandLine;
using Fiddler.Host.Cli;

var root = new RootCommand("Fiddler.NET: Mixture-of-Experts inference across GPU and CPU");
root.Add(GenerateCommand.Create());
root.Add(VerifyCommand.Create());
root.Add(BenchDecodeCommand.Create());
return CliErrors.Run(() => root.Parse(args).Invoke());
