namespace JobRunner;

/// <summary>
/// Settings of the Kubernetes engine, which runs <see cref="ContainerSpec"/>s as batch/v1 Jobs. The connection is, in
/// order: <see cref="Server"/> when set; the pod's service account when <see cref="InCluster"/> is set (or, with
/// nothing set, when <c>KUBERNETES_SERVICE_HOST</c> is); otherwise a kubeconfig (<see cref="KubeconfigPath"/>, the
/// <c>KUBECONFIG</c> variable, or <c>~/.kube/config</c>).
/// </summary>
public sealed class KubernetesEngineOptions
{
    /// <summary>Gets or sets the namespace the Jobs run in.</summary>
    /// <value>The default value is <c>default</c>.</value>
    public string Namespace { get; set; } = "default";

    /// <summary>Gets or sets the API server to talk to directly (for example a fake server in tests), bypassing kubeconfig and service account.</summary>
    /// <value>The default value is <see langword="null"/>.</value>
    public Uri? Server { get; set; }

    /// <summary>Gets or sets the bearer token sent to <see cref="Server"/>.</summary>
    /// <value>The default value is <see langword="null"/>: no token.</value>
    public string? AccessToken { get; set; }

    /// <summary>Gets or sets whether to use the pod's service account (token, CA file, <c>KUBERNETES_SERVICE_HOST</c>/<c>_PORT</c>).</summary>
    /// <value>The default value is <see langword="false"/>.</value>
    public bool InCluster { get; set; }

    /// <summary>Gets or sets the kubeconfig file.</summary>
    /// <value>The default value is <see langword="null"/>: the files of <c>KUBECONFIG</c> (merged as kubectl merges them), else <c>~/.kube/config</c>.</value>
    public string? KubeconfigPath { get; set; }

    /// <summary>Gets or sets the kubeconfig context to use.</summary>
    /// <value>The default value is <see langword="null"/>: the kubeconfig's <c>current-context</c>.</value>
    public string? Context { get; set; }

    /// <summary>Gets or sets the prefix of Job names (a DNS-1123 label of at most 16 characters). Names are <c>{prefix}-{job id}-{attempt}</c>.</summary>
    /// <value>The default value is <c>jr</c>.</value>
    public string JobNamePrefix { get; set; } = "jr";

    /// <summary>Gets or sets how long a finished Job is kept before Kubernetes deletes it (<c>ttlSecondsAfterFinished</c>).</summary>
    /// <value>The default value is 1 hour.</value>
    public TimeSpan TtlAfterFinished { get; set; } = TimeSpan.FromHours(1);

    /// <summary>Gets or sets how long a pod may stay in image pull back-off before the attempt fails permanently.</summary>
    /// <value>The default value is 5 minutes.</value>
    public TimeSpan ImagePullBackOffLimit { get; set; } = TimeSpan.FromMinutes(5);

    /// <summary>
    /// Gets or sets how long a scheduled pod's container may wait to start for a reason other than its image before the
    /// attempt fails and the Job is deleted: <c>CreateContainerConfigError</c> (a Secret or ConfigMap it refers to is
    /// missing) and <c>CreateContainerError</c> fail permanently; <c>RunContainerError</c> and a pod stuck in
    /// <c>ContainerCreating</c> (a volume that cannot be mounted) fail transiently. Pulling a large image also shows as
    /// <c>ContainerCreating</c>: when the limit is reached while the kubelet's latest <c>Pulling</c> event has no
    /// <c>Pulled</c> or failure after it, the limit starts over instead (up to <see cref="ImagePullLimit"/>). <c>PodInitializing</c> counts only once the
    /// pod's init containers are done (its <c>Initialized</c> condition). Must be positive.
    /// </summary>
    /// <value>The default value is 15 minutes.</value>
    public TimeSpan ContainerStartLimit { get; set; } = TimeSpan.FromMinutes(15);

    /// <summary>
    /// Gets or sets how long a container may wait in <c>ContainerCreating</c> while the kubelet pulls its image (its latest
    /// <c>Pulling</c> event has no <c>Pulled</c> or failure after it), counted from when it began to wait, before the
    /// attempt fails (transiently, so it is retried) and the Job is deleted: a registry that never answers would otherwise
    /// keep the attempt waiting for good. Also bounds how long the pod's events may fail to be read while the container
    /// waits in <c>ContainerCreating</c> past <see cref="ContainerStartLimit"/>. Must be positive.
    /// </summary>
    /// <value>The default value is 30 minutes.</value>
    public TimeSpan ImagePullLimit { get; set; } = TimeSpan.FromMinutes(30);

    /// <summary>
    /// Gets or sets how long a pod may stay unschedulable, or a Job may stay without any pod (the cluster refuses to create
    /// it: PodSecurity, a ResourceQuota, a missing service account; the error quotes the Job's events), before the attempt
    /// fails (transiently, so it is retried) and the Job is deleted.
    /// </summary>
    /// <value>The default value is 10 minutes.</value>
    public TimeSpan UnschedulableLimit { get; set; } = TimeSpan.FromMinutes(10);

    /// <summary>Gets or sets how often the in-cluster service-account token is read again (it is rotated on disk).</summary>
    /// <value>The default value is 1 minute.</value>
    public TimeSpan TokenRefreshInterval { get; set; } = TimeSpan.FromMinutes(1);

    /// <summary>Gets or sets whether pod logs are streamed into the job's log.</summary>
    /// <value>The default value is <see langword="true"/>.</value>
    public bool StreamLogs { get; set; } = true;

    /// <summary>
    /// Gets or sets how often a host looks for Kubernetes Jobs that run on for jobs already finished in the store (a job
    /// cancelled while its Job waited for a new owner after a graceful stop, which no attempt deletes) and deletes them.
    /// Each look reads from the store every active Job no attempt of this host watches (those of other hosts too) that
    /// is older than one interval. <see langword="null"/> never looks. Default 1 minute.
    /// </summary>
    public TimeSpan? OrphanSweepInterval { get; set; } = TimeSpan.FromMinutes(1);

    /// <summary>Gets or sets the service account the pods run as.</summary>
    /// <value>The default value is <see langword="null"/>: the namespace's default.</value>
    public string? ServiceAccountName { get; set; }

    /// <summary>Gets or sets the image pull policy (<c>Always</c>, <c>IfNotPresent</c> or <c>Never</c>).</summary>
    /// <value>The default value is <see langword="null"/>: the cluster's default.</value>
    public string? ImagePullPolicy { get; set; }

    /// <summary>Gets the labels added to every Job and pod (keys are qualified names, values label values).</summary>
    /// <value>The default value is empty.</value>
    public IDictionary<string, string> Labels { get; } = new Dictionary<string, string>(StringComparer.Ordinal);

    /// <summary>Gets the exit codes classified as transient; other non-zero exit codes fail the job permanently.</summary>
    /// <value>The default value is empty.</value>
    public ISet<int> TransientExitCodes { get; } = new HashSet<int>();
}
