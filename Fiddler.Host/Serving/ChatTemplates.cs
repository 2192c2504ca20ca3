using Fiddler.Kernels.Text;

namespace Fiddler.Host.Serving;

/// <summary>The model's chat template as the service runs it (Kernels' <see cref="ChatTemplate"/> behind a <see cref="ChatFormatter"/>).</summary>
public static class ChatTemplates
{
    /// <summary>
    /// Null when the model has no chat template. A template that cannot run is a start-up error
    /// (<see cref="InvalidDataException"/>, exit code 2): serving chat with a half-understood template would send the
    /// model garbage prompts.
    /// </summary>
    public static ChatFormatter? Load(string modelDir)
    {
        ChatTemplate? template;
        try
        {
            template = ChatTemplate.FromTokenizerConfig(modelDir);
        }
        catch (NotSupportedException e)
        {
            throw new InvalidDataException($"{modelDir}: the model's chat template cannot be run: {e.Message}", e);
        }
        return template is null ? null : new ChatFormatter(template.Name, messages => template.Apply(messages));
    }
}
