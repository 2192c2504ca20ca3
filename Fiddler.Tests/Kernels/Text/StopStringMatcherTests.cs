using System.Text;
using Fiddler.Kernels.Text;
using Xunit;

namespace Fiddler.Tests.Kernels.Text;

public sealed class StopStringMatcherTests
{
    [Fact]
    public void Push_StopSplitAcrossDeltas_HoldsBackAndStops()
    {
        var m = new StopStringMatcher(["STOP"]);
        Assert.Equal(new StopMatchResult("abc ", false, null), m.Push("abc ST"));
        Assert.Equal(2, m.PendingLength);
        Assert.Equal(new StopMatchResult("", true, "STOP"), m.Push("OP and more"));
        Assert.True(m.Stopped);
        Assert.Equal("STOP", m.MatchedStopString);
    }

    [Fact]
    public void Push_StopSplitOverThreeDeltas_Stops()
    {
        var m = new StopStringMatcher(["</answer>"]);
        Assert.Equal("x", m.Push("x</").Text);
        Assert.Equal("", m.Push("ans").Text);
        var r = m.Push("wer>tail");
        Assert.True(r.Stopped);
        Assert.Equal("", r.Text);
    }

    [Fact]
    public void Push_StopAtStart_EmitsNothing()
    {
        var m = new StopStringMatcher(["STOP"]);
        Assert.Equal(new StopMatchResult("", true, "STOP"), m.Push("STOP right there"));
    }

    [Fact]
    public void Push_StopInsideDelta_EmitsTextBeforeIt()
    {
        var m = new StopStringMatcher(["\n\n"]);
        Assert.Equal(new StopMatchResult("line one", true, "\n\n"), m.Push("line one\n\nline two"));
    }

    [Fact]
    public void Push_AfterStop_ReturnsEmptyAndStopped()
    {
        var m = new StopStringMatcher(["x"]);
        m.Push("ax");
        Assert.Equal(new StopMatchResult("", true, "x"), m.Push("more"));
        Assert.Equal("", m.Flush());
    }

    [Fact]
    public void Push_PartialMatchThatFails_ReleasesHeldText()
    {
        var m = new StopStringMatcher(["STOP"]);
        Assert.Equal("", m.Push("ST").Text);
        Assert.Equal("STay", m.Push("ay").Text);
        Assert.False(m.Stopped);
    }

    [Fact]
    public void Push_OverlappingStops_ShorterCompletingFirstWins()
    {
        var m = new StopStringMatcher(["abc", "ab"]);
        Assert.Equal("x", m.Push("xa").Text);
        Assert.Equal(new StopMatchResult("", true, "ab"), m.Push("bc"));
    }

    [Fact]
    public void Push_LongerStopOnlyCandidate_HeldThenReleased()
    {
        var m = new StopStringMatcher(["abc"]);
        Assert.Equal("", m.Push("ab").Text);
        Assert.Equal(new StopMatchResult("abd", false, null), m.Push("d"));
    }

    [Fact]
    public void Push_HeldPrefixOfLongStopContainsShortStop_StopsAtShort()
    {
        var m = new StopStringMatcher(["abc", "bd"]);
        Assert.Equal("", m.Push("ab").Text);
        Assert.Equal(new StopMatchResult("a", true, "bd"), m.Push("d"));
    }

    [Fact]
    public void Push_TwoStopsEndingTogether_EarlierStartWins()
    {
        var m = new StopStringMatcher(["bc", "abc"]);
        Assert.Equal(new StopMatchResult("", true, "abc"), m.Push("abc"));
    }

    [Fact]
    public void Push_SelfOverlappingStop_FindsIt()
    {
        var m = new StopStringMatcher(["aab"]);
        Assert.Equal("", m.Push("a").Text);
        Assert.Equal("", m.Push("a").Text);
        Assert.Equal("a", m.Push("a").Text); // "aaa": keep "aa"
        Assert.Equal(new StopMatchResult("", true, "aab"), m.Push("b"));
    }

    [Fact]
    public void Push_AnySplitOfText_GivesSameResultAsOnePush()
    {
        string[] stops = ["<|end|>", "\nUser:", "end"];
        const string text = "Some <|en text and\nUser is here <|end|> ignored";
        var (expected, expectedStop) = StopStringMatcher.Truncate(text, stops);
        Assert.Equal("Some <|en text and\nUser is here <|", expected);
        Assert.Equal("end", expectedStop);

        var rng = new Random(1234);
        for (int trial = 0; trial < 200; trial++)
        {
            var m = new StopStringMatcher(stops);
            var emitted = new StringBuilder();
            int pos = 0;
            StopMatchResult r = default;
            while (pos < text.Length && !r.Stopped)
            {
                int len = Math.Min(rng.Next(0, 5), text.Length - pos);
                r = m.Push(text.Substring(pos, len));
                emitted.Append(r.Text);
                pos += len;
            }
            if (!r.Stopped)
            {
                emitted.Append(m.Flush());
            }
            Assert.Equal(expected, emitted.ToString());
            Assert.Equal(expectedStop, m.MatchedStopString);
        }
    }

    [Fact]
    public void Flush_NoStopHit_ReturnsHeldText()
    {
        var m = new StopStringMatcher(["STOP"]);
        Assert.Equal("end ", m.Push("end STO").Text);
        Assert.Equal("STO", m.Flush());
        Assert.Equal(0, m.PendingLength);
    }

    [Fact]
    public void Push_NoStopStrings_PassesThrough()
    {
        var m = new StopStringMatcher(null);
        Assert.Equal(new StopMatchResult("anything", false, null), m.Push("anything"));
        Assert.Empty(m.StopStrings);
    }

    [Fact]
    public void Constructor_EmptyStopString_Throws()
    {
        Assert.Throws<ArgumentException>(() => new StopStringMatcher(["ok", ""]));
    }

    [Fact]
    public void Constructor_DuplicateStops_AreDeduplicated()
    {
        Assert.Single(new StopStringMatcher(["x", "x"]).StopStrings);
    }
}
