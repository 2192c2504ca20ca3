using System.Text;

namespace Fiddler.Kernels.Text;

/// <summary>Result of <see cref="StopStringMatcher.Push"/>.</summary>
/// <param name="Text">Text that is safe to emit now (never contains any part of a matched stop string).</param>
/// <param name="Stopped">Whether a stop string has been hit; generation should end.</param>
/// <param name="StopString">The stop string that was hit, when <paramref name="Stopped"/>.</param>
public readonly record struct StopMatchResult(string Text, bool Stopped, string? StopString);

/// <summary>
/// Finds stop strings in a stream of text deltas (e.g. from <see cref="StreamingDecoder"/>).
/// </summary>
/// <remarks>
/// Each <see cref="Push"/> returns the text that can be emitted. A suffix of the text that could be the start of a
/// stop string is held back until it either completes a stop string (then it is dropped, with everything after
/// it) or can no longer become one (then it is emitted). When several stop strings occur, the one that completes
/// first in the stream wins (ties: the one that starts first), so the result does not depend on how the text was
/// split into deltas. Matching is ordinal. After a stop, <see cref="Push"/> returns empty text.
/// At the end of generation without a stop, call <see cref="Flush"/> to get the held-back text.
/// Not thread-safe.
/// </remarks>
public sealed class StopStringMatcher
{
    private readonly string[] _stops;
    private readonly int _maxStopLength;
    private string _pending = string.Empty;

    /// <param name="stopStrings">Stop strings; null or empty means none. Entries must be non-empty.</param>
    public StopStringMatcher(IEnumerable<string>? stopStrings)
    {
        var list = new List<string>();
        foreach (var s in stopStrings ?? [])
        {
            if (string.IsNullOrEmpty(s))
            {
                throw new ArgumentException("Stop strings must be non-empty.", nameof(stopStrings));
            }
            if (!list.Contains(s, StringComparer.Ordinal))
            {
                list.Add(s);
            }
        }
        _stops = [.. list];
        _maxStopLength = _stops.Length == 0 ? 0 : _stops.Max(s => s.Length);
    }

    /// <summary>The distinct stop strings.</summary>
    public IReadOnlyList<string> StopStrings => _stops;

    /// <summary>Whether a stop string has been hit.</summary>
    public bool Stopped { get; private set; }

    /// <summary>The stop string that was hit, if any.</summary>
    public string? MatchedStopString { get; private set; }

    /// <summary>Length of the text currently held back.</summary>
    public int PendingLength => _pending.Length;

    /// <summary>Feeds a text delta; returns what is safe to emit and whether a stop string was hit.</summary>
    public StopMatchResult Push(string delta)
    {
        ArgumentNullException.ThrowIfNull(delta);
        if (Stopped)
        {
            return new StopMatchResult(string.Empty, true, MatchedStopString);
        }
        if (_stops.Length == 0)
        {
            return new StopMatchResult(delta, false, null);
        }

        string buffer = _pending.Length == 0 ? delta : _pending + delta;

        // The held-back text contains no complete stop string, so a match found here ends inside `delta`.
        int bestStart = -1;
        int bestEnd = int.MaxValue;
        string? best = null;
        foreach (var stop in _stops)
        {
            int idx = buffer.IndexOf(stop, StringComparison.Ordinal);
            if (idx < 0)
            {
                continue;
            }
            int end = idx + stop.Length;
            if (end < bestEnd || (end == bestEnd && idx < bestStart))
            {
                bestStart = idx;
                bestEnd = end;
                best = stop;
            }
        }

        if (best is not null)
        {
            Stopped = true;
            MatchedStopString = best;
            _pending = string.Empty;
            return new StopMatchResult(buffer[..bestStart], true, best);
        }

        int hold = LongestPartialStopSuffix(buffer);
        _pending = hold == 0 ? string.Empty : buffer[^hold..];
        return new StopMatchResult(hold == 0 ? buffer : buffer[..^hold], false, null);
    }

    /// <summary>Returns (and clears) the held-back text; call at the end of generation when no stop was hit.
    /// Returns empty after a stop.</summary>
    public string Flush()
    {
        string s = _pending;
        _pending = string.Empty;
        return s;
    }

    /// <summary>Length of the longest suffix of <paramref name="text"/> that is a proper prefix of a stop string.</summary>
    private int LongestPartialStopSuffix(string text)
    {
        int max = Math.Min(text.Length, _maxStopLength - 1);
        for (int k = max; k > 0; k--)
        {
            var suffix = text.AsSpan(text.Length - k);
            foreach (var stop in _stops)
            {
                if (stop.Length > k && stop.AsSpan().StartsWith(suffix, StringComparison.Ordinal))
                {
                    return k;
                }
            }
        }
        return 0;
    }

    /// <summary>Convenience for non-streaming use: the text up to the first stop string (as the streaming
    /// path would emit it), and the stop string hit, if any.</summary>
    public static (string Text, string? StopString) Truncate(string text, IEnumerable<string>? stopStrings)
    {
        ArgumentNullException.ThrowIfNull(text);
        var m = new StopStringMatcher(stopStrings);
        var r = m.Push(text);
        if (r.Stopped)
        {
            return (r.Text, r.StopString);
        }
        return (new StringBuilder(r.Text).Append(m.Flush()).ToString(), null);
    }
}
