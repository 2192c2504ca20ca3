using System.Text;
using Xunit;
using Xunit.Abstractions;

namespace Fiddler.Tests.Serving;

/// <summary>The malformed request corpus: size, determinism, variety; and a run against the fake server (a good one passes, a broken one is caught).</summary>
public sealed class MalformedRequestsTests(ITestOutputHelper output)
{
    [Fact]
    public void All_AnySeed_AtLeastAThousandUniquelyNamedCases()
    {
        foreach (int seed in new[] { 0, 1, 42 })
        {
            var names = MalformedRequests.All(seed).Select(c => c.Name).ToList();
            Assert.True(names.Count >= 1000, $"seed {seed}: {names.Count} cases");
            var duplicates = names.GroupBy(n => n).Where(g => g.Count() > 1).Select(g => g.Key).ToList();
            Assert.True(duplicates.Count == 0, "duplicate names: " + string.Join(", ", duplicates.Take(10)));
        }
    }

    [Fact]
    public void All_SameSeed_SameCasesByteForByte()
    {
        using var first = MalformedRequests.All(7).GetEnumerator();
        using var second = MalformedRequests.All(7).GetEnumerator();
        int count = 0;
        while (first.MoveNext())
        {
            Assert.True(second.MoveNext(), $"the second run ended after {count} cases");
            var (a, b) = (first.Current, second.Current);
            Assert.Equal(a.Name, b.Name);
            Assert.Equal(a.Method, b.Method);
            Assert.Equal(a.Path, b.Path);
            Assert.Equal(a.Headers, b.Headers);
            Assert.True(a.Body.AsSpan().SequenceEqual(b.Body), a.Name);
            count++;
        }
        Assert.False(second.MoveNext(), $"the second run has more than {count} cases");
    }

    [Fact]
    public void All_OtherSeed_OtherRandomCases()
    {
        static string Mutants(int seed) => string.Join("\n", MalformedRequests.All(seed).Where(c => c.Name.StartsWith("mutant/") || c.Name.Contains("/truncated-at-"))
            .Select(c => c.Name + ":" + Convert.ToHexString(c.Body)));
        Assert.NotEqual(Mutants(1), Mutants(2));
    }

    [Fact]
    public void All_Variety_EveryFamilyMethodAndHostileShape()
    {
        var cases = MalformedRequests.All(3).ToList();
        string[] families = ["json", "type", "value", "messages", "prompt", "missing", "huge", "unicode", "utf8", "content-type", "method", "route", "header", "semantic", "mutant"];
        var seen = cases.Select(c => c.Name.Split('/')[0]).ToHashSet();
        Assert.All(families, f => Assert.Contains(f, seen));
        Assert.True(cases.Select(c => c.Method.Method).Distinct().Count() >= 8);
        Assert.True(cases.Select(c => c.Path).Distinct().Count() >= 30);
        Assert.True(cases.SelectMany(c => c.Headers).Where(h => h.Key == "Content-Type").Select(h => h.Value).Distinct().Count() >= 10);
        Assert.Contains(cases, c => c.Body.Length >= 8 << 20);
        Assert.Contains(cases, c => c.Headers.Any(h => h.Key == "Authorization" && h.Value.Length > 64 << 10));
        // Invalid UTF-8 on the wire, and lone surrogates as JSON escapes.
        var strict = new UTF8Encoding(false, throwOnInvalidBytes: true);
        Assert.Contains(cases, c => { try { strict.GetString(c.Body); return false; } catch (DecoderFallbackException) { return true; } });
        Assert.Contains(cases, c => c.Body.Length < 1000 && Encoding.UTF8.GetString(c.Body).Contains("\\ud800"));
        Assert.Contains(cases, c => c.Body.Length < 200_000 && Encoding.UTF8.GetString(c.Body).StartsWith(new string('[', 10_000)));
        // Every field of both endpoints gets wrong types.
        foreach (string field in new[] { "messages", "prompt", "max_tokens", "temperature", "top_p", "stop", "n", "seed", "stream", "logprobs" })
            Assert.Contains(cases, c => c.Name.StartsWith($"type/") && c.Name.Contains($"/{field}/"));
    }

    [Fact]
    public async Task RunAsync_FakeServer_NoServerErrorNoExceptionStillServes()
    {
        await using var server = await FakeOpenAiServer.StartAsync();
        using var client = new HttpClient { BaseAddress = server.BaseUrl };
        var report = await MalformedRequests.RunAsync(client, MalformedRequests.All(seed: 1));
        output.WriteLine(report.Summary());
        Assert.True(report.Passed, report.Summary());
        Assert.True(report.Outcomes.Count >= 1000);
        foreach (int status in new[] { 400, 404, 405 }) Assert.True(report.StatusCounts.ContainsKey(status), $"no {status}: {report.Summary()}");
    }

    [Fact]
    public async Task RunAsync_ServerWithApiKey_CasesStillAnsweredBelow500()
    {
        await using var server = await FakeOpenAiServer.StartAsync(new FakeServerOptions { ApiKey = "k" });
        using var client = new HttpClient { BaseAddress = server.BaseUrl };
        client.DefaultRequestHeaders.Authorization = new("Bearer", "k");
        var report = await MalformedRequests.RunAsync(client, MalformedRequests.All(seed: 2).Where(c => c.Name.StartsWith("header/") || c.Name.StartsWith("type/chat/")));
        Assert.True(report.Passed, report.Summary());
        Assert.True(report.StatusCounts.GetValueOrDefault(401) >= 10, report.Summary()); // the cases that bring their own Authorization
    }

    [Fact]
    public async Task RunAsync_ServerThatCrashesOnBadJson_ReportsThe500sByName()
    {
        await using var server = await FakeOpenAiServer.StartAsync(new FakeServerOptions { ThrowOnBadJson = true });
        using var client = new HttpClient { BaseAddress = server.BaseUrl };
        var report = await MalformedRequests.RunAsync(client, MalformedRequests.All(seed: 1).Where(c => c.Name.StartsWith("json/")));
        Assert.False(report.Passed);
        Assert.Contains(report.ServerErrors, o => o.Name == "json/chat/trailing-x" && o.Status == 500);
        Assert.Contains("json/chat/trailing-x", report.Summary());
        Assert.True(report.WellFormedStillWorks, report.WellFormedDetail);
    }
}
