using Fiddler.Host.Cli;

return FiddlerCli.Run(args);
