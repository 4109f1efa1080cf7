using System.Text.Json;
using System.Text.Json.Serialization;

namespace JobRunner.Kubernetes.Client;

// The Kubernetes API objects, with exactly the fields JobRunner reads or writes. Unknown fields are ignored on read.
// Names and nesting follow the API (checked against the kubernetes/api round-trip fixtures in the tests).

internal sealed class ObjectMeta
{
    public string? Name { get; set; }

    public string? GenerateName { get; set; }

    public string? Namespace { get; set; }

    public string? Uid { get; set; }

    public string? ResourceVersion { get; set; }

    public DateTimeOffset? CreationTimestamp { get; set; }

    public DateTimeOffset? DeletionTimestamp { get; set; }

    public Dictionary<string, string>? Labels { get; set; }

    public Dictionary<string, string>? Annotations { get; set; }
}

internal sealed class ListMeta
{
    public string? ResourceVersion { get; set; }

    public string? Continue { get; set; }
}

internal sealed class KubeJob
{
    public string? ApiVersion { get; set; }

    public string? Kind { get; set; }

    public ObjectMeta Metadata { get; set; } = new();

    public JobSpec? Spec { get; set; }

    public JobStatus? Status { get; set; }
}

internal sealed class JobSpec
{
    public int? BackoffLimit { get; set; }

    public long? ActiveDeadlineSeconds { get; set; }

    public int? TtlSecondsAfterFinished { get; set; }

    /// <summary>Set by a queueing controller (Kueue) that holds the Job back until it admits it; no pod is made meanwhile.</summary>
    public bool? Suspend { get; set; }

    public PodTemplateSpec Template { get; set; } = new();
}

internal sealed class PodTemplateSpec
{
    public ObjectMeta? Metadata { get; set; }

    public PodSpec Spec { get; set; } = new();
}

internal sealed class PodSpec
{
    public List<Container> Containers { get; set; } = [];

    public string? RestartPolicy { get; set; }

    public Dictionary<string, string>? NodeSelector { get; set; }

    public List<KubeToleration>? Tolerations { get; set; }

    public string? ServiceAccountName { get; set; }

    public string? NodeName { get; set; }
}

internal sealed class Container
{
    public string Name { get; set; } = "";

    public string? Image { get; set; }

    public List<string>? Command { get; set; }

    public List<string>? Args { get; set; }

    public string? WorkingDir { get; set; }

    public List<KubeEnvVar>? Env { get; set; }

    public ResourceRequirements? Resources { get; set; }

    public string? ImagePullPolicy { get; set; }
}

internal sealed class KubeEnvVar
{
    public string Name { get; set; } = "";

    public string? Value { get; set; }
}

internal sealed class ResourceRequirements
{
    public Dictionary<string, string>? Requests { get; set; }

    public Dictionary<string, string>? Limits { get; set; }
}

internal sealed class KubeToleration
{
    public string? Key { get; set; }

    public string? Operator { get; set; }

    public string? Value { get; set; }

    public string? Effect { get; set; }
}

internal sealed class JobStatus
{
    public List<Condition>? Conditions { get; set; }

    public int? Active { get; set; }

    public int? Succeeded { get; set; }

    public int? Failed { get; set; }

    public DateTimeOffset? StartTime { get; set; }

    public DateTimeOffset? CompletionTime { get; set; }
}

internal sealed class Condition
{
    public string Type { get; set; } = "";

    public string Status { get; set; } = "";

    public string? Reason { get; set; }

    public string? Message { get; set; }

    public DateTimeOffset? LastTransitionTime { get; set; }
}

internal sealed class KubePod
{
    public ObjectMeta Metadata { get; set; } = new();

    public PodSpec? Spec { get; set; }

    public PodStatus? Status { get; set; }
}

internal sealed class PodStatus
{
    public string? Phase { get; set; }

    public string? Reason { get; set; }

    public string? Message { get; set; }

    public List<Condition>? Conditions { get; set; }

    public List<ContainerStatus>? ContainerStatuses { get; set; }

    public List<ContainerStatus>? InitContainerStatuses { get; set; }
}

internal sealed class ContainerStatus
{
    public string Name { get; set; } = "";

    public ContainerState? State { get; set; }

    public int RestartCount { get; set; }
}

internal sealed class ContainerState
{
    public ContainerStateWaiting? Waiting { get; set; }

    public ContainerStateRunning? Running { get; set; }

    public ContainerStateTerminated? Terminated { get; set; }
}

internal sealed class ContainerStateWaiting
{
    public string? Reason { get; set; }

    public string? Message { get; set; }
}

internal sealed class ContainerStateRunning
{
    public DateTimeOffset? StartedAt { get; set; }
}

internal sealed class ContainerStateTerminated
{
    public int ExitCode { get; set; }

    public int? Signal { get; set; }

    public string? Reason { get; set; }

    public string? Message { get; set; }
}

internal sealed class KubeJobList
{
    public ListMeta Metadata { get; set; } = new();

    public List<KubeJob> Items { get; set; } = [];
}

internal sealed class KubePodList
{
    public ListMeta Metadata { get; set; } = new();

    public List<KubePod> Items { get; set; } = [];
}

internal sealed class KubeEvent
{
    public ObjectMeta Metadata { get; set; } = new();

    public ObjectReference? InvolvedObject { get; set; }

    public string? Reason { get; set; }

    public string? Message { get; set; }

    public string? Type { get; set; }

    public int? Count { get; set; }

    public DateTimeOffset? LastTimestamp { get; set; }

    /// <summary>Gets or sets when it happened, for events written through events.k8s.io (no lastTimestamp).</summary>
    public DateTimeOffset? EventTime { get; set; }
}

internal sealed class ObjectReference
{
    public string? Kind { get; set; }

    public string? Name { get; set; }

    public string? Namespace { get; set; }
}

internal sealed class KubeEventList
{
    public ListMeta Metadata { get; set; } = new();

    public List<KubeEvent> Items { get; set; } = [];
}

internal sealed class KubeNode
{
    public ObjectMeta Metadata { get; set; } = new();

    public NodeStatus? Status { get; set; }

    /// <summary>Gets whether the node's Ready condition is True.</summary>
    [JsonIgnore]
    public bool IsReady => Status?.Conditions?.Exists(static c => c.Type == "Ready" && c.Status == "True") == true;
}

internal sealed class NodeStatus
{
    public List<Condition>? Conditions { get; set; }
}

internal sealed class KubeNodeList
{
    public ListMeta Metadata { get; set; } = new();

    public List<KubeNode> Items { get; set; } = [];
}

internal sealed class KubeStatus
{
    public string? Kind { get; set; }

    public string? ApiVersion { get; set; }

    public string? Status { get; set; }

    public string? Message { get; set; }

    public string? Reason { get; set; }

    public StatusDetails? Details { get; set; }

    public int Code { get; set; }
}

internal sealed class StatusDetails
{
    public string? Name { get; set; }

    public string? Kind { get; set; }

    public List<StatusCause>? Causes { get; set; }

    public int? RetryAfterSeconds { get; set; }
}

internal sealed class StatusCause
{
    public string? Reason { get; set; }

    public string? Message { get; set; }

    public string? Field { get; set; }
}

internal sealed class DeleteOptions
{
    public string Kind { get; set; } = "DeleteOptions";

    public string ApiVersion { get; set; } = "v1";

    public string? PropagationPolicy { get; set; }
}

/// <summary>One event of a watch stream: <c>{"type": ..., "object": ...}</c>; the object is parsed by type.</summary>
internal sealed class RawWatchEvent
{
    public string Type { get; set; } = "";

    public JsonElement Object { get; set; }
}

/// <summary>A client-go style ExecCredential, written to and read from credential plugins.</summary>
internal sealed class ExecCredential
{
    public string ApiVersion { get; set; } = "client.authentication.k8s.io/v1";

    public string Kind { get; set; } = "ExecCredential";

    public ExecCredentialSpec? Spec { get; set; }

    public ExecCredentialStatus? Status { get; set; }
}

internal sealed class ExecCredentialSpec
{
    public bool Interactive { get; set; }
}

internal sealed class ExecCredentialStatus
{
    public string? Token { get; set; }

    public DateTimeOffset? ExpirationTimestamp { get; set; }

    public string? ClientCertificateData { get; set; }

    public string? ClientKeyData { get; set; }
}

[JsonSourceGenerationOptions(
    PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(KubeJob))]
[JsonSerializable(typeof(KubeJobList))]
[JsonSerializable(typeof(KubePod))]
[JsonSerializable(typeof(KubePodList))]
[JsonSerializable(typeof(KubeEventList))]
[JsonSerializable(typeof(KubeNodeList))]
[JsonSerializable(typeof(KubeStatus))]
[JsonSerializable(typeof(DeleteOptions))]
[JsonSerializable(typeof(RawWatchEvent))]
[JsonSerializable(typeof(ExecCredential))]
internal sealed partial class KubeJson : JsonSerializerContext;
