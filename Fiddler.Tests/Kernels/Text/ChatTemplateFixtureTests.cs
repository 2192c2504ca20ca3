using System.Text.Json.Nodes;
using Fiddler.Kernels.Text;
using Xunit;

namespace Fiddler.Tests.Kernels.Text;

/// <summary>
/// Byte-for-byte parity with jinja2: Fixtures/chat_templates/chat_template_cases.json was rendered by
/// make_chat_fixtures.py with jinja2 in transformers' environment, from the .jinja files beside it.
/// </summary>
public sealed class ChatTemplateFixtureTests
{
    private static readonly string Dir = Path.Combine(AppContext.BaseDirectory, "Fixtures", "chat_templates");

    private static readonly Lazy<JsonObject> Cases = new(() =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(Dir, "chat_template_cases.json")))!.AsObject());

    private static readonly Dictionary<string, ChatTemplate> Templates = [];

    public static TheoryData<string, string, bool> AllCases()
    {
        var data = new TheoryData<string, string, bool>();
        foreach (var c in Cases.Value["cases"]!.AsArray())
        {
            data.Add(c!["template"]!.GetValue<string>(), c["conversation"]!.GetValue<string>(), c["add_generation_prompt"]!.GetValue<bool>());
        }
        return data;
    }

    private static ChatTemplate Load(string stem)
    {
        lock (Templates)
        {
            if (!Templates.TryGetValue(stem, out var template))
            {
                var tokens = Cases.Value["templates"]![stem]!.AsObject();
                string source = File.ReadAllText(Path.Combine(Dir, stem + ".jinja"));
                template = ChatTemplate.Parse(source, tokens["bos_token"]?.GetValue<string>(), tokens["eos_token"]?.GetValue<string>());
                Templates[stem] = template;
            }
            return template;
        }
    }

    [Theory]
    [MemberData(nameof(AllCases))]
    public void Apply_FixtureCase_MatchesJinja2(string template, string conversation, bool addGenerationPrompt)
    {
        var c = Cases.Value["cases"]!.AsArray().Single(x =>
            x!["template"]!.GetValue<string>() == template && x["conversation"]!.GetValue<string>() == conversation
            && x["add_generation_prompt"]!.GetValue<bool>() == addGenerationPrompt)!;
        var messages = Cases.Value["conversations"]![conversation]!.AsArray()
            .Select(m => (m![0]!.GetValue<string>(), m[1]!.GetValue<string>()))
            .ToList();

        var chat = Load(template);
        if (c["expected"] is { } expected)
        {
            Assert.Equal(expected.GetValue<string>(), chat.Apply(messages, addGenerationPrompt));
        }
        else
        {
            var ex = Assert.Throws<ArgumentException>(() => chat.Apply(messages, addGenerationPrompt));
            Assert.StartsWith(c["error"]!["message"]!.GetValue<string>(), ex.Message);
        }
    }

    [Theory]
    [InlineData("mixtral-8x7b-instruct-v0.1", "mistral-instruct")]
    [InlineData("mistral-7b-instruct-v0.3", "mistral-instruct")]
    [InlineData("llama-2-chat", "llama-2")]
    [InlineData("chatml-openhermes", "chatml")]
    [InlineData("zephyr-7b-beta", "zephyr")]
    [InlineData("gemma-7b-it", "gemma")]
    [InlineData("llama-3-8b-instruct", "llama-3")]
    [InlineData("jinja-features", "custom")]
    public void Name_KnownTemplate_IsRecognisedFamily(string template, string family) =>
        Assert.Equal(family, Load(template).Name);
}
