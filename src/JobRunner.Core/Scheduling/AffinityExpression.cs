using System.Diagnostics;
using JobRunner.Configuration;

namespace JobRunner.Scheduling;

/// <summary>
/// A parsed <see cref="JobRequest.Affinity"/>: immutable lists of required, preferred and avoided labels. The grammar is
/// a comma-separated list of terms; a term is <c>key</c> (the worker has the label, any value) or <c>key=value</c>,
/// marked <c>key=value?</c> when preferred (soft) and <c>!key</c> or <c>!key=value</c> when avoided (hard).
/// </summary>
[DebuggerDisplay("{Expression}")]
internal sealed class AffinityExpression
{
    private AffinityExpression(string expression, LabelTerm[] required, LabelTerm[] preferred, LabelTerm[] avoided)
    {
        Expression = expression;
        Required = required;
        Preferred = preferred;
        Avoided = avoided;
    }

    public string Expression { get; }

    public IReadOnlyList<LabelTerm> Required { get; }

    public IReadOnlyList<LabelTerm> Preferred { get; }

    public IReadOnlyList<LabelTerm> Avoided { get; }

    /// <summary>Parses <paramref name="expression"/>; on failure adds every problem (quoting the term, naming the fix) to <paramref name="errors"/>.</summary>
    /// <returns>The parsed form, or <see langword="null"/> when the expression is malformed.</returns>
    public static AffinityExpression? Parse(string expression, List<string> errors)
    {
        var before = errors.Count;
        var required = new List<LabelTerm>();
        var preferred = new List<LabelTerm>();
        var avoided = new List<LabelTerm>();
        var parts = expression.Split(',');
        if (string.IsNullOrWhiteSpace(expression))
        {
            errors.Add("Affinity is empty. Leave it null for no affinity, or write terms such as 'gpu=true, zone=eu?, !spot'.");
            return null;
        }

        for (var i = 0; i < parts.Length; i++)
        {
            var term = parts[i].Trim();
            if (term.Length == 0)
            {
                errors.Add($"Affinity '{expression}' has an empty term (number {i + 1}). Remove the extra comma: terms are separated by single commas.");
                continue;
            }

            var avoid = term.StartsWith('!');
            var prefer = term.EndsWith('?');
            if (avoid && prefer)
            {
                errors.Add($"Affinity term '{term}' both avoids ('!') and prefers ('?'). Avoiding is always hard: write '{term[..^1]}' to never run on such a worker, or '{term[1..]}' to prefer it.");
                continue;
            }

            var selector = term.AsSpan(avoid ? 1 : 0, term.Length - (avoid || prefer ? 1 : 0)).Trim().ToString();
            if (ParseSelector(term, selector, errors) is not { } label)
            {
                continue;
            }

            (avoid ? avoided : prefer ? preferred : required).Add(label);
        }

        Contradictions(required, avoided, errors);
        return errors.Count != before ? null : new AffinityExpression(expression, [.. required], [.. preferred], [.. avoided]);
    }

    /// <summary>How this expression fits a worker with <paramref name="labels"/>.</summary>
    public AffinityFit Evaluate(IReadOnlyDictionary<string, string> labels)
    {
        foreach (var term in Required)
        {
            if (!term.IsMetBy(labels))
            {
                return new AffinityFit(Capable: false, Term: term.ToString(), Detail: term.Value is null ? $"it lacks the required label '{term.Key}'" : $"it lacks the required label {term}" + (labels.TryGetValue(term.Key, out var has) ? $" (it has {term.Key}={has})" : ""));
            }
        }

        foreach (var term in Avoided)
        {
            if (term.IsMetBy(labels))
            {
                return new AffinityFit(Capable: false, Term: "!" + term, Detail: $"it has the avoided label {term.Key}={labels[term.Key]}");
            }
        }

        foreach (var term in Preferred)
        {
            if (!term.IsMetBy(labels))
            {
                return new AffinityFit(Capable: true, Term: term + "?", Detail: $"it lacks the preferred label {term}");
            }
        }

        return AffinityFit.Preferred;
    }

    private static LabelTerm? ParseSelector(string term, string selector, List<string> errors)
    {
        var equals = selector.IndexOf('=', StringComparison.Ordinal);
        var key = (equals < 0 ? selector : selector[..equals]).Trim();
        var value = equals < 0 ? null : selector[(equals + 1)..].Trim();
        if (!Names.IsValidLabelKey(key))
        {
            errors.Add($"Affinity term '{term}' has the label key '{key}', which is not valid: use an optional DNS prefix and '/', then a name ({Names.NameRule}). A term is 'key', 'key=value', 'key=value?' (preferred) or '!key=value' (avoided).");
            return null;
        }

        if (value is { Length: 0 })
        {
            errors.Add($"Affinity term '{term}' has no value after '='. Write '{key}=VALUE' to match one value, or '{key}' to match the label with any value.");
            return null;
        }

        if (value is not null && !Names.IsValidLabelValue(value))
        {
            errors.Add($"Affinity term '{term}' has the value '{value}', which is not valid: use a name ({Names.NameRule}).");
            return null;
        }

        return new LabelTerm(key, value);
    }

    private static void Contradictions(List<LabelTerm> required, List<LabelTerm> avoided, List<string> errors)
    {
        for (var i = 0; i < required.Count; i++)
        {
            var need = required[i];
            foreach (var avoid in avoided)
            {
                if (avoid.Key == need.Key && (avoid.Value is null || avoid.Value == need.Value))
                {
                    errors.Add($"Affinity terms '{need}' and '!{avoid}' contradict each other: no worker could run the job. Remove one of them.");
                }
            }

            for (var j = i + 1; j < required.Count; j++)
            {
                if (required[j].Key == need.Key && need.Value is not null && required[j].Value is not null && required[j].Value != need.Value)
                {
                    errors.Add($"Affinity terms '{need}' and '{required[j]}' require two values of one label: no worker could run the job. Keep one, or make the other preferred ('{required[j]}?').");
                }
            }
        }
    }
}

/// <summary>A label a term matches: <see cref="Key"/> with <see cref="Value"/>, or with any value when it is <see langword="null"/>.</summary>
internal readonly record struct LabelTerm(string Key, string? Value)
{
    public bool IsMetBy(IReadOnlyDictionary<string, string> labels)
        => labels.TryGetValue(Key, out var value) && (Value is null || string.Equals(Value, value, StringComparison.Ordinal));

    public override string ToString() => Value is null ? Key : Key + "=" + Value;
}

/// <summary>How a job's affinity fits one worker.</summary>
/// <param name="Capable">Whether the worker may run it: every required label present, no avoided one.</param>
/// <param name="Term">The term that failed (the missing required or preferred label, or the avoided one), as written.</param>
/// <param name="Detail">What the worker lacks or has, for explanations.</param>
internal sealed record AffinityFit(bool Capable, string? Term, string? Detail)
{
    public static readonly AffinityFit Preferred = new(Capable: true, Term: null, Detail: null);

    /// <summary>Gets whether the worker has every preferred label (or the job prefers none).</summary>
    public bool IsPreferred => Capable && Term is null;
}
