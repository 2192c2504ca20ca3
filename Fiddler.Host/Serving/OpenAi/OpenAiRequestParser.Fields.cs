using System.Globalization;
using System.Text.Json;

namespace Fiddler.Host.Serving.OpenAi;

// Typed field readers: JSON null counts as not given. The param name defaults to the field name.
public static partial class OpenAiRequestParser
{
    private static JsonElement? Get(JsonElement obj, string name)
    {
        try
        {
            return obj.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;
        }
        // Valid JSON may escape an unpaired surrogate in a key ("\ud800"): the lookup unescapes every key it passes and throws.
        catch (InvalidOperationException e) { throw new RequestException($"a property name is not valid text: {e.Message}"); }
    }

    private static string? String(JsonElement obj, string name, string? param = null)
    {
        if (Get(obj, name) is not { } v) return null;
        return v.ValueKind == JsonValueKind.String ? Text(v, param ?? name) : throw TypeError(param ?? name, "a string", v);
    }

    /// <summary>GetString throws for escapes that are not valid UTF-16 (a lone \ud800): that is the client's error.</summary>
    private static string Text(JsonElement v, string param)
    {
        try { return v.GetString()!; }
        catch (InvalidOperationException e) { throw new RequestException($"'{param}' is not valid text: {e.Message}", param); }
    }

    private static bool? Bool(JsonElement obj, string name, string? param = null) => Get(obj, name) switch
    {
        null => null,
        { ValueKind: JsonValueKind.True } => true,
        { ValueKind: JsonValueKind.False } => false,
        { } v => throw TypeError(param ?? name, "a boolean", v),
    };

    private static int? Integer(JsonElement obj, string name, int min, int max)
    {
        if (Get(obj, name) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out long x)) throw TypeError(name, "an integer", v);
        if (x < min) throw new RequestException($"invalid '{name}': integer below minimum value. Expected a value >= {min}, but got {x} instead", name);
        if (x > max) throw new RequestException($"invalid '{name}': integer above maximum value. Expected a value <= {max}, but got {x} instead", name);
        return (int)x;
    }

    private static long? Long(JsonElement obj, string name)
    {
        if (Get(obj, name) is not { } v) return null;
        return v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out long x) ? x : throw TypeError(name, "an integer", v);
    }

    private static float? Number(JsonElement obj, string name, double min, double max, bool minExclusive = false)
    {
        if (Get(obj, name) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetDouble(out double x) || !double.IsFinite(x)) throw TypeError(name, "a number", v);
        if (x < min || (minExclusive && x == min))
            throw new RequestException($"invalid '{name}': decimal below minimum value. Expected a value {(minExclusive ? ">" : ">=")} {F(min)}, but got {F(x)} instead", name);
        if (x > max) throw new RequestException($"invalid '{name}': decimal above maximum value. Expected a value <= {F(max)}, but got {F(x)} instead", name);
        return (float)x;
    }

    private static string F(double x) => x.ToString(CultureInfo.InvariantCulture);

    private static RequestException TypeError(string param, string expected, JsonElement got) =>
        new($"invalid type for '{param}': expected {expected}, but got {Kind(got)} instead", param);

    private static string Kind(JsonElement v) => v.ValueKind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => v.TryGetInt64(out _) ? "an integer" : "a decimal",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        _ => "null",
    };
}
