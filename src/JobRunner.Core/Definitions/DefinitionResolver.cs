using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using JobRunner.Configuration;

namespace JobRunner.Definitions;

/// <summary>Validates definitions and fills their <c>${name}</c> placeholders with checked parameter values.</summary>
internal static class DefinitionResolver
{
    private static readonly TimeSpan s_patternTimeout = TimeSpan.FromMilliseconds(100);

    public static void Validate(JobDefinition definition)
    {
        ArgumentNullException.ThrowIfNull(definition);
        var errors = new List<string>();
        if (!Names.IsValidName(definition.Name))
        {
            errors.Add($"Definition name '{definition.Name}' is not valid: {Names.NameRule}.");
        }

        if (definition.Aliases is null)
        {
            errors.Add("Aliases is null. Use an empty list for a definition without aliases.");
        }

        if (definition.Parameters is null)
        {
            errors.Add("Parameters is null. Use an empty list for a definition without parameters.");
        }

        foreach (var alias in definition.Aliases ?? [])
        {
            if (!Names.IsValidName(alias) || alias == definition.Name)
            {
                errors.Add($"Alias '{alias}' is not valid: {Names.NameRule}, and different from the name.");
            }
        }

        if (definition.Priority is < JobRequest.MinPriority or > JobRequest.MaxPriority)
        {
            errors.Add($"Priority {definition.Priority} is outside 1–10. Use a value from 1 (lowest) to 10 (highest).");
        }

        var declared = new HashSet<string>(StringComparer.Ordinal);
        foreach (var parameter in definition.Parameters ?? [])
        {
            if (!IsIdentifier(parameter.Name))
            {
                errors.Add($"Parameter name '{parameter.Name}' is not valid. Use letters, digits and '_', not starting with a digit.");
                continue;
            }

            if (!declared.Add(parameter.Name))
            {
                errors.Add($"Parameter '{parameter.Name}' is declared more than once. Declare each parameter once.");
            }

            if (parameter.Default is { } value && Check(parameter, value) is { } problem)
            {
                errors.Add($"The default of parameter '{parameter.Name}' is invalid: {problem}");
            }

            if (parameter.Pattern is { } pattern)
            {
                try
                {
                    _ = new Regex(pattern, RegexOptions.None, s_patternTimeout);
                }
                catch (ArgumentException e)
                {
                    errors.Add($"Parameter '{parameter.Name}' has an invalid pattern: {e.Message}");
                }
            }
        }

        if (definition.Spec is null)
        {
            errors.Add("Spec is null. Set it to the container spec to run.");
        }
        else
        {
            foreach (var text in Templated(definition.Spec))
            {
                foreach (var name in Placeholders(text))
                {
                    if (!declared.Contains(name))
                    {
                        errors.Add($"The spec uses ${{{name}}} but no parameter '{name}' is declared. Declare it in Parameters.");
                    }
                }
            }

            errors.AddRange(definition.Spec.Validate());
        }

        if (errors.Count > 0)
        {
            throw new JobValidationException(errors);
        }
    }

    /// <summary>Checks the supplied values, adds defaults, and returns the resolved spec and values.</summary>
    public static (ContainerSpec Spec, IReadOnlyDictionary<string, string> Values) Resolve(JobDefinition definition, IReadOnlyDictionary<string, string>? supplied)
    {
        var errors = new List<string>();
        var values = new Dictionary<string, string>(StringComparer.Ordinal);
        var byName = definition.Parameters.ToDictionary(p => p.Name, StringComparer.Ordinal);
        foreach (var (name, value) in supplied ?? new Dictionary<string, string>())
        {
            if (!byName.TryGetValue(name, out var parameter))
            {
                errors.Add($"Definition '{definition.Name}' has no parameter '{name}'. Its parameters: {(byName.Count == 0 ? "none" : string.Join(", ", byName.Keys))}.");
            }
            else if (Check(parameter, value) is { } problem)
            {
                errors.Add($"Parameter '{name}': {problem}");
            }
            else
            {
                values[name] = value;
            }
        }

        foreach (var parameter in definition.Parameters)
        {
            if (values.ContainsKey(parameter.Name) || supplied?.ContainsKey(parameter.Name) == true)
            {
                continue;
            }

            if (parameter.Default is { } value)
            {
                values[parameter.Name] = value;
            }
            else if (parameter.Required)
            {
                errors.Add($"Parameter '{parameter.Name}' is required. Supply a {parameter.Type.ToString().ToLowerInvariant()} value for it.");
            }
            else
            {
                values[parameter.Name] = "";
            }
        }

        if (errors.Count > 0)
        {
            throw new JobValidationException(errors);
        }

        string Fill(string text) => Substitute(text, name => values.GetValueOrDefault(name, ""));
        var spec = definition.Spec with
        {
            Image = Fill(definition.Spec.Image),
            Command = [.. definition.Spec.Command.Select(Fill)],
            Args = [.. definition.Spec.Args.Select(Fill)],
            Env = [.. definition.Spec.Env.Select(e => e with { Value = Fill(e.Value) })],
            WorkingDirectory = definition.Spec.WorkingDirectory is { } dir ? Fill(dir) : null,
        };
        return (spec, values);
    }

    private static string? Check(DefinitionParameter parameter, string value)
    {
        switch (parameter.Type)
        {
            case ParameterType.Integer when !long.TryParse(value, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out _):
                return $"'{value}' is not a whole number.";
            case ParameterType.Number when !double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out var parsed) || !double.IsFinite(parsed):
                return $"'{value}' is not a finite number.";
            case ParameterType.Boolean when value is not ("true" or "false"):
                return $"'{value}' is not true or false.";
        }

        if (parameter.Type is ParameterType.Integer or ParameterType.Number)
        {
            var number = double.Parse(value, NumberStyles.Float, CultureInfo.InvariantCulture);
            if (number < parameter.Min || number > parameter.Max)
            {
                return $"{value} is outside {parameter.Min?.ToString(CultureInfo.InvariantCulture) ?? "-∞"}–{parameter.Max?.ToString(CultureInfo.InvariantCulture) ?? "∞"}.";
            }
        }

        if (parameter.AllowedValues is { } allowed && !allowed.Contains(value, StringComparer.Ordinal))
        {
            return $"'{value}' is not one of: {string.Join(", ", allowed)}.";
        }

        if (parameter.Pattern is { } pattern && !Regex.IsMatch(value, $"^(?:{pattern})$", RegexOptions.None, s_patternTimeout))
        {
            return $"'{value}' does not match the pattern {pattern}.";
        }

        return null;
    }

    private static IEnumerable<string> Templated(ContainerSpec spec)
    {
        yield return spec.Image ?? "";
        foreach (var text in spec.Command ?? [])
        {
            yield return text;
        }

        foreach (var text in spec.Args ?? [])
        {
            yield return text;
        }

        foreach (var env in spec.Env ?? [])
        {
            yield return env?.Value ?? "";
        }

        if (spec.WorkingDirectory is { } dir)
        {
            yield return dir;
        }
    }

    private static List<string> Placeholders(string text)
    {
        var names = new List<string>();
        Substitute(text, name =>
        {
            names.Add(name);
            return "";
        });
        return names;
    }

    /// <summary>Replaces every <c>${name}</c> with <paramref name="value"/>(name); an unclosed <c>${</c> stays as it is.</summary>
    private static string Substitute(string text, Func<string, string> value)
    {
        if (!text.Contains("${", StringComparison.Ordinal))
        {
            return text;
        }

        var sb = new StringBuilder(text.Length);
        var at = 0;
        for (var i = text.IndexOf("${", StringComparison.Ordinal); i >= 0; i = text.IndexOf("${", at, StringComparison.Ordinal))
        {
            var end = text.IndexOf('}', i + 2);
            if (end < 0)
            {
                break;
            }

            sb.Append(text, at, i - at).Append(value(text[(i + 2)..end]));
            at = end + 1;
        }

        return sb.Append(text, at, text.Length - at).ToString();
    }

    private static bool IsIdentifier(string? name)
        => !string.IsNullOrEmpty(name) && !char.IsAsciiDigit(name[0]) && name.All(static c => char.IsAsciiLetterOrDigit(c) || c == '_');
}
