using System.Text.Json.Nodes;

namespace JobRunner.Kubernetes.Testing;

/// <summary>Label selectors (<c>k=v</c>, <c>k==v</c>, <c>k!=v</c>, <c>k</c>, <c>!k</c>, comma = and) and field selectors (<c>a.b=v</c>, <c>a.b!=v</c>).</summary>
internal static class Selectors
{
    public static bool Matches(JsonObject value, string? labelSelector, string? fieldSelector)
        => MatchesLabels(value["metadata"]?["labels"] as JsonObject, labelSelector) && MatchesFields(value, fieldSelector);

    private static bool MatchesLabels(JsonObject? labels, string? selector)
    {
        if (string.IsNullOrEmpty(selector))
        {
            return true;
        }

        foreach (var raw in selector.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            string? Label(string key) => labels?[key]?.GetValue<string>();
            if (raw.Split("!=", 2) is [var nk, var nv])
            {
                if (Label(nk) == nv)
                {
                    return false;
                }
            }
            else if (raw.Split("==", 2) is [var ek, var ev] || raw.Split('=', 2) is [var ek2, var ev2] && (ek = ek2) is not null && (ev = ev2) is not null)
            {
                if (Label(ek) != ev)
                {
                    return false;
                }
            }
            else if (raw.StartsWith('!'))
            {
                if (Label(raw[1..]) is not null)
                {
                    return false;
                }
            }
            else if (Label(raw) is null)
            {
                return false;
            }
        }

        return true;
    }

    private static bool MatchesFields(JsonObject value, string? selector)
    {
        if (string.IsNullOrEmpty(selector))
        {
            return true;
        }

        foreach (var raw in selector.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var negate = raw.Contains("!=", StringComparison.Ordinal);
            var parts = negate ? raw.Split("!=", 2) : raw.Replace("==", "=", StringComparison.Ordinal).Split('=', 2);
            if (parts.Length != 2)
            {
                return false;
            }

            JsonNode? node = value;
            foreach (var segment in parts[0].Split('.'))
            {
                node = node?[segment];
            }

            var actual = node?.ToString() ?? "";
            if ((actual == parts[1]) == negate)
            {
                return false;
            }
        }

        return true;
    }
}
