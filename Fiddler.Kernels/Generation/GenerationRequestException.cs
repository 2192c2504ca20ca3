namespace Fiddler.Kernels.Generation;

/// <summary>
/// A generation request this model cannot take (an empty prompt, a token outside the vocabulary, options out of range,
/// a context overflow): the caller's error, found before any work. Every other exception out of a generation is the
/// engine's, even an <see cref="ArgumentException"/> (a NaN logit, a weight copy refused), and a server reports it as
/// such rather than as a bad request.
/// </summary>
public sealed class GenerationRequestException(string message, string? paramName = null) : ArgumentException(message, paramName);
