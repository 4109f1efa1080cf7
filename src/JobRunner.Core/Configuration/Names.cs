namespace JobRunner.Configuration;

/// <summary>The naming rules for workloads, tenants and labels, with messages that name the fix.</summary>
internal static class Names
{
    public const int MaxNameLength = 63;
    public const int MaxKeyLength = 256;
    public const string NameRule = "use 1–63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit";

    /// <summary>A workload or tenant name: 1–63 characters of [A-Za-z0-9._-], alphanumeric at both ends.</summary>
    public static bool IsValidName(string? value) => value is { Length: > 0 and <= MaxNameLength } && IsNameSegment(value);

    /// <summary>A label key: an optional DNS-subdomain prefix and '/', then a name (the Kubernetes rule).</summary>
    public static bool IsValidLabelKey(string? key)
    {
        if (string.IsNullOrEmpty(key))
        {
            return false;
        }

        var slash = key.IndexOf('/', StringComparison.Ordinal);
        if (slash < 0)
        {
            return IsValidName(key);
        }

        var prefix = key.AsSpan(0, slash);
        return prefix.Length is > 0 and <= 253 && IsPrefix(prefix) && IsValidName(key[(slash + 1)..]);
    }

    /// <summary>A label value: empty, or a name.</summary>
    public static bool IsValidLabelValue(string? value) => value is not null && (value.Length == 0 || IsValidName(value));

    private static bool IsNameSegment(ReadOnlySpan<char> value)
    {
        if (!char.IsAsciiLetterOrDigit(value[0]) || !char.IsAsciiLetterOrDigit(value[^1]))
        {
            return false;
        }

        foreach (var c in value)
        {
            if (!char.IsAsciiLetterOrDigit(c) && c is not ('-' or '_' or '.'))
            {
                return false;
            }
        }

        return true;
    }

    private static bool IsPrefix(ReadOnlySpan<char> prefix)
    {
        foreach (var part in prefix.ToString().Split('.'))
        {
            if (part.Length is 0 or > 63 || !char.IsAsciiLetterLower(part[0]) && !char.IsAsciiDigit(part[0]) || !char.IsAsciiLetterLower(part[^1]) && !char.IsAsciiDigit(part[^1]))
            {
                return false;
            }

            foreach (var c in part)
            {
                if (!char.IsAsciiLetterLower(c) && !char.IsAsciiDigit(c) && c != '-')
                {
                    return false;
                }
            }
        }

        return true;
    }
}
