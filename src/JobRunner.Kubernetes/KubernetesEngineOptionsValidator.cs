using JobRunner.Kubernetes.Connection;
using JobRunner.Kubernetes.Engine;
using Microsoft.Extensions.Options;

namespace JobRunner.Kubernetes;

/// <summary>Checks the Kubernetes engine's settings at start, including that the connection (kubeconfig, context, service account) resolves.</summary>
internal sealed class KubernetesEngineOptionsValidator : IValidateOptions<KubernetesEngineOptions>
{
    public ValidateOptionsResult Validate(string? name, KubernetesEngineOptions options)
    {
        var errors = new List<string>();
        if (!KubeNames.IsDnsLabel(options.Namespace))
        {
            errors.Add($"KubernetesEngineOptions.Namespace '{options.Namespace}' is not a valid namespace: use 1–63 lowercase letters, digits or '-', starting and ending with a letter or digit.");
        }

        if (!KubeNames.IsDnsLabel(options.JobNamePrefix) || options.JobNamePrefix.Length > 16)
        {
            errors.Add($"KubernetesEngineOptions.JobNamePrefix '{options.JobNamePrefix}' is invalid: use 1–16 lowercase letters, digits or '-', starting and ending with a letter or digit (Job names are '{{prefix}}-{{job id}}-{{attempt}}', at most 63 characters).");
        }

        if (options.TtlAfterFinished < TimeSpan.Zero || options.TtlAfterFinished.TotalSeconds > int.MaxValue)
        {
            errors.Add("KubernetesEngineOptions.TtlAfterFinished must be zero or more seconds.");
        }

        // Each limit arms a timer: at most what a timer takes.
        if (options.ImagePullBackOffLimit < TimeSpan.Zero || options.ImagePullBackOffLimit > TimerLimits.Max)
        {
            errors.Add("KubernetesEngineOptions.ImagePullBackOffLimit must be zero or more and at most 49.7 days (what a timer takes); zero fails an attempt at the first image pull error.");
        }

        // Every container waits in ContainerCreating for a moment: zero would fail nearly every attempt.
        if (options.ContainerStartLimit <= TimeSpan.Zero || options.ContainerStartLimit > TimerLimits.Max)
        {
            errors.Add("KubernetesEngineOptions.ContainerStartLimit must be positive and at most 49.7 days (what a timer takes); every container waits to start for a moment.");
        }

        // A pull takes a moment even from a fast registry: zero would fail nearly every pull.
        if (options.ImagePullLimit <= TimeSpan.Zero || options.ImagePullLimit > TimerLimits.Max)
        {
            errors.Add("KubernetesEngineOptions.ImagePullLimit must be positive and at most 49.7 days (what a timer takes); raise it for images that take long to pull.");
        }

        if (options.UnschedulableLimit < TimeSpan.Zero || options.UnschedulableLimit > TimerLimits.Max)
        {
            errors.Add("KubernetesEngineOptions.UnschedulableLimit must be zero or more and at most 49.7 days (what a timer takes).");
        }

        if (options.OrphanSweepInterval is { } sweep && (sweep <= TimeSpan.Zero || sweep > TimerLimits.Max))
        {
            errors.Add("KubernetesEngineOptions.OrphanSweepInterval must be positive and at most 49.7 days (what a timer takes), or null to never delete Jobs left running for finished jobs.");
        }

        if (options.TokenRefreshInterval <= TimeSpan.Zero)
        {
            errors.Add("KubernetesEngineOptions.TokenRefreshInterval must be positive.");
        }

        if (options.ImagePullPolicy is not (null or "Always" or "IfNotPresent" or "Never"))
        {
            errors.Add($"KubernetesEngineOptions.ImagePullPolicy '{options.ImagePullPolicy}' is invalid: use Always, IfNotPresent, Never, or null for the cluster's default.");
        }

        if (options.ServiceAccountName is { } account && !KubeNames.IsDnsSubdomain(account))
        {
            errors.Add($"KubernetesEngineOptions.ServiceAccountName '{account}' is not a valid name: use at most 253 lowercase letters, digits, '-' or '.', starting and ending with a letter or digit.");
        }

        if (options.Server is { } server && server.Scheme != Uri.UriSchemeHttps && server.Scheme != Uri.UriSchemeHttp)
        {
            errors.Add($"KubernetesEngineOptions.Server '{server}' must be an http or https URL.");
        }

        KubeNames.ValidateLabels(options.Labels, "KubernetesEngineOptions.Labels", errors);
        if (errors.Count == 0)
        {
            try
            {
                KubernetesConnection.Resolve(options, Environment.GetEnvironmentVariable);
            }
            catch (KubeconfigException e)
            {
                errors.Add(e.Message);
            }
        }

        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }
}
