using System.Globalization;
using JobRunner.Kubernetes.Client;

namespace JobRunner.Kubernetes.Engine;

/// <summary>Maps a <see cref="ContainerSpec"/> to a batch/v1 Job, after checking everything Kubernetes would reject.</summary>
internal static class JobMapper
{
    private static readonly string[] s_effects = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

    /// <summary>Every problem Kubernetes would reject, found before any API call.</summary>
    public static List<string> Validate(ContainerSpec spec)
    {
        var errors = new List<string>(spec.Validate());
        KubeNames.ValidateLabels(spec.NodeSelector, "ContainerSpec.NodeSelector", errors);
        foreach (var t in spec.Tolerations)
        {
            if (t.Key.Length == 0 ? t.Operator != TolerationOperator.Exists : !KubeNames.IsQualifiedName(t.Key))
            {
                errors.Add($"Toleration key '{t.Key}' is invalid: use a label key, or an empty key with Operator = Exists to tolerate every taint.");
            }

            if (t.Operator == TolerationOperator.Exists && !string.IsNullOrEmpty(t.Value))
            {
                errors.Add($"Toleration '{t.Key}' uses Operator = Exists with a value: remove the value, or use Operator = Equal.");
            }

            if (t.Effect is not null && Array.IndexOf(s_effects, t.Effect) < 0)
            {
                errors.Add($"Toleration '{t.Key}' has effect '{t.Effect}': use NoSchedule, PreferNoSchedule, NoExecute, or null for all.");
            }
        }

        return errors;
    }

    public static KubeJob ToJob(string name, ContainerSpec spec, WorkloadContext context, KubernetesEngineOptions options)
    {
        var labels = new Dictionary<string, string>(options.Labels, StringComparer.Ordinal)
        {
            [KubeNames.ManagedByLabel] = KubeNames.ManagedByValue,
            [KubeNames.JobIdLabel] = context.JobId.ToString(),
            [KubeNames.AttemptLabel] = context.Attempt.ToString(CultureInfo.InvariantCulture),
            [KubeNames.LifecycleLabel] = spec.Lifecycle == Lifecycle.Spot ? "spot" : "on-demand",
            [KubeNames.KubeJobLabel] = name,
        };

        var env = new List<KubeEnvVar>(spec.Env.Count + 4)
        {
            new() { Name = "JOBRUNNER_JOB_ID", Value = context.JobId.ToString() },
            new() { Name = "JOBRUNNER_ATTEMPT", Value = context.Attempt.ToString(CultureInfo.InvariantCulture) },
            new() { Name = "JOBRUNNER_FENCE_TOKEN", Value = context.FenceToken.ToString(CultureInfo.InvariantCulture) },
            new() { Name = "JOBRUNNER_TENANT", Value = context.Request.Tenant },
        };
        foreach (var e in spec.Env)
        {
            env.Add(new KubeEnvVar { Name = e.Name, Value = e.Value });
        }

        var r = spec.Resources;
        var resources = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["cpu"] = r.CpuMillicores.ToString(CultureInfo.InvariantCulture) + "m",
            ["memory"] = r.MemoryMb.ToString(CultureInfo.InvariantCulture) + "Mi",
        };
        if (r.EphemeralStorageMb is { } storage)
        {
            resources["ephemeral-storage"] = storage.ToString(CultureInfo.InvariantCulture) + "Mi";
        }

        if (r.Gpus > 0)
        {
            resources["nvidia.com/gpu"] = r.Gpus.ToString(CultureInfo.InvariantCulture);
        }

        return new KubeJob
        {
            ApiVersion = "batch/v1",
            Kind = "Job",
            Metadata = new ObjectMeta { Name = name, Namespace = options.Namespace, Labels = labels },
            Spec = new JobSpec
            {
                // Retries belong to JobRunner: one pod per attempt.
                BackoffLimit = 0,
                ActiveDeadlineSeconds = spec.Timeout is { } timeout ? (long)Math.Ceiling(timeout.TotalSeconds) : null,
                TtlSecondsAfterFinished = (int)options.TtlAfterFinished.TotalSeconds,
                Template = new PodTemplateSpec
                {
                    Metadata = new ObjectMeta { Labels = labels },
                    Spec = new PodSpec
                    {
                        RestartPolicy = "Never",
                        ServiceAccountName = options.ServiceAccountName,
                        NodeSelector = spec.NodeSelector.Count == 0 ? null : new Dictionary<string, string>(spec.NodeSelector, StringComparer.Ordinal),
                        Tolerations = spec.Tolerations.Count == 0 ? null : spec.Tolerations.Select(static t => new KubeToleration
                        {
                            Key = t.Key.Length == 0 ? null : t.Key,
                            Operator = t.Operator == TolerationOperator.Exists ? "Exists" : "Equal",
                            Value = t.Value,
                            Effect = t.Effect,
                        }).ToList(),
                        Containers =
                        [
                            new Container
                            {
                                Name = KubeNames.ContainerName,
                                Image = spec.Image,
                                Command = spec.Command.Count == 0 ? null : [.. spec.Command],
                                Args = spec.Args.Count == 0 ? null : [.. spec.Args],
                                WorkingDir = spec.WorkingDirectory,
                                Env = env,
                                ImagePullPolicy = options.ImagePullPolicy,
                                Resources = new ResourceRequirements
                                {
                                    Requests = resources,
                                    Limits = new Dictionary<string, string>(resources, StringComparer.Ordinal),
                                },
                            },
                        ],
                    },
                },
            },
        };
    }
}
