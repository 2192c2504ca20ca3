global using TorchSharp.Modules;
global using TorchSharp.Utils;
