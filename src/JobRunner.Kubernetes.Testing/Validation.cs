using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace JobRunner.Kubernetes.Testing;

/// <summary>The fake's share of the API server's validation of Jobs: what a client most often gets wrong.</summary>
internal static partial class Validation
{
    public static List<(string Reason, string Message, string Field)> ValidateJob(JsonObject job, string name)
    {
        var causes = new List<(string, string, string)>();
        if (name.Length == 0)
        {
            causes.Add(("FieldValueRequired", "Required value: name or generateName is required", "metadata.name"));
        }
        else if (name.Length > 63 || !DnsLabel().IsMatch(name))
        {
            causes.Add(("FieldValueInvalid", $"Invalid value: \"{name}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')", "metadata.name"));
        }

        var spec = job["spec"]?["template"]?["spec"];
        var containers = spec?["containers"] as JsonArray;
        if (containers is null || containers.Count == 0)
        {
            causes.Add(("FieldValueRequired", "Required value", "spec.template.spec.containers"));
        }
        else
        {
            for (var i = 0; i < containers.Count; i++)
            {
                if (string.IsNullOrWhiteSpace(containers[i]?["image"]?.GetValue<string>()))
                {
                    causes.Add(("FieldValueRequired", "Required value", $"spec.template.spec.containers[{i}].image"));
                }

                if (string.IsNullOrEmpty(containers[i]?["name"]?.GetValue<string>()))
                {
                    causes.Add(("FieldValueRequired", "Required value", $"spec.template.spec.containers[{i}].name"));
                }
            }
        }

        var restart = spec?["restartPolicy"]?.GetValue<string>();
        if (restart is not ("Never" or "OnFailure"))
        {
            causes.Add(("FieldValueNotSupported", $"Unsupported value: \"{restart ?? "Always"}\": supported values: \"OnFailure\", \"Never\"", "spec.template.spec.restartPolicy"));
        }

        return causes;
    }

    [GeneratedRegex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", RegexOptions.CultureInvariant)]
    private static partial Regex DnsLabel();
}
