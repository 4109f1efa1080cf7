using System.Text.RegularExpressions;

namespace JobRunner.Kubernetes.Engine;

/// <summary>Kubernetes name and label rules (DNS-1123 labels, qualified names, label values).</summary>
internal static partial class KubeNames
{
    public const string ManagedByLabel = "app.kubernetes.io/managed-by";
    public const string ManagedByValue = "jobrunner";
    public const string JobIdLabel = "jobrunner.io/job-id";
    public const string AttemptLabel = "jobrunner.io/attempt";
    public const string LifecycleLabel = "jobrunner.io/lifecycle";
    public const string KubeJobLabel = "jobrunner.io/k8s-job";
    public const string ContainerName = "main";
    public const string ManagedSelector = ManagedByLabel + "=" + ManagedByValue;

    public static bool IsDnsLabel(string? value) => value is { Length: > 0 and <= 63 } && DnsLabel().IsMatch(value);

    /// <summary>A DNS-1123 subdomain (the names of most objects, service accounts among them): at most 253 characters.</summary>
    public static bool IsDnsSubdomain(string? value) => value is { Length: > 0 and <= 253 } && DnsSubdomain().IsMatch(value);

    public static bool IsLabelValue(string? value) => value is not null && value.Length <= 63 && (value.Length == 0 || LabelValue().IsMatch(value));

    /// <summary>A qualified name: an optional DNS-1123 subdomain prefix and '/', then a name of 1–63 characters.</summary>
    public static bool IsQualifiedName(string? value)
    {
        if (string.IsNullOrEmpty(value))
        {
            return false;
        }

        var slash = value.IndexOf('/', StringComparison.Ordinal);
        var name = slash < 0 ? value : value[(slash + 1)..];
        if (slash >= 0)
        {
            var prefix = value[..slash];
            if (prefix.Length is 0 or > 253 || !DnsSubdomain().IsMatch(prefix))
            {
                return false;
            }
        }

        return name.Length is > 0 and <= 63 && LabelValue().IsMatch(name);
    }

    /// <summary>The Job name of an attempt: <c>{prefix}-{job id}-{attempt}</c>, at most 63 characters.</summary>
    public static string JobName(string prefix, JobId jobId, int attempt) => $"{prefix}-{jobId}-{attempt}";

    public static void ValidateLabels(IEnumerable<KeyValuePair<string, string>> labels, string what, List<string> errors)
    {
        foreach (var (key, value) in labels)
        {
            if (!IsQualifiedName(key))
            {
                errors.Add($"{what} key '{key}' is not a valid label key: use an optional DNS subdomain prefix and '/', then 1–63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit.");
            }

            if (!IsLabelValue(value))
            {
                errors.Add($"{what} '{key}' has value '{value}', which is not a valid label value: use at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit.");
            }
        }
    }

    [GeneratedRegex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", RegexOptions.CultureInvariant)]
    private static partial Regex DnsLabel();

    [GeneratedRegex(@"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", RegexOptions.CultureInvariant)]
    private static partial Regex DnsSubdomain();

    [GeneratedRegex(@"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$", RegexOptions.CultureInvariant)]
    private static partial Regex LabelValue();
}
