// Compiled into each package that checks or writes free text (JobRunner.Core validates keys, the PostgreSQL store writes
// messages): one source, no public type.
namespace JobRunner;

/// <summary>
/// What a store cannot hold as text: NUL (PostgreSQL text refuses it) and an unpaired surrogate (it has no UTF-8 form, so
/// it does not round-trip through a durable store or a queue message).
/// </summary>
internal static class StorableText
{
    /// <summary>Gets the index of the first NUL or unpaired surrogate in <paramref name="text"/>, or -1.</summary>
    public static int IndexOfUnstorable(ReadOnlySpan<char> text)
    {
        if (!text.Contains('\0') && text.IndexOfAnyInRange('\uD800', '\uDFFF') < 0)
        {
            return -1;
        }

        for (var i = 0; i < text.Length; i++)
        {
            var c = text[i];
            if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                i++;
            }
            else if (c == '\0' || char.IsSurrogate(c))
            {
                return i;
            }
        }

        return -1;
    }
}
