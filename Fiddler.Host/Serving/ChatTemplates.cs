namespace Fiddler.Host.Serving;

/// <summary>The model's chat template as the service runs it (Kernels' ChatTemplate behind a <see cref="ChatFormatter"/>).</summary>
public static class ChatTemplates
{
    /// <summary>Null when the model has no chat template; throws <see cref="InvalidDataException"/> (exit code 2) for one that cannot run.</summary>
    public static ChatFormatter? Load(string modelDir)
    {
        // Placeholder until branch tmpl (Fiddler.Kernels.Text.ChatTemplate) is merged: no template, chat answers 400.
        _ = modelDir;
        return null;
    }
}
