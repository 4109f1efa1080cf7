using System.Text;

namespace JobRunner;

/// <summary>
/// A containerized task: image, command and arguments (an array, never a shell string), environment, resources and
/// placement. The process engine runs it as a local process; cluster engines run it as a container.
/// </summary>
public sealed record ContainerSpec
{
    /// <summary>Gets the image. Locally it only names the environment (see the process engine); cluster engines pull it.</summary>
    public required string Image { get; init; }

    /// <summary>Gets the executable and its leading arguments, e.g. <c>["/bin/sh", "-c"]</c>. Never parsed by a shell by JobRunner.</summary>
    public IReadOnlyList<string> Command { get; init; } = [];

    /// <summary>Gets the arguments that follow <see cref="Command"/>.</summary>
    public IReadOnlyList<string> Args { get; init; } = [];

    /// <summary>Gets the environment variables. Secret values are never logged, printed or returned by reads.</summary>
    public IReadOnlyList<EnvVar> Env { get; init; } = [];

    /// <summary>Gets the working directory; <see langword="null"/> for the engine's default.</summary>
    public string? WorkingDirectory { get; init; }

    /// <summary>Gets the resources the task needs.</summary>
    /// <value>The default value is 1,000 millicores and 1,024 MB.</value>
    public ContainerResources Resources { get; init; } = new();

    /// <summary>Gets the node labels the task must run on (cluster engines).</summary>
    public IReadOnlyDictionary<string, string> NodeSelector { get; init; } = new Dictionary<string, string>(0);

    /// <summary>Gets the taints the task tolerates (cluster engines).</summary>
    public IReadOnlyList<Toleration> Tolerations { get; init; } = [];

    /// <summary>Gets the kind of capacity the task runs on (cluster engines).</summary>
    /// <value>The default value is <see cref="Lifecycle.OnDemand"/>.</value>
    public Lifecycle Lifecycle { get; init; } = Lifecycle.OnDemand;

    /// <summary>Gets the time limit of one run; <see langword="null"/> for none.</summary>
    public TimeSpan? Timeout { get; init; }

    /// <summary>Gets a copy whose secret environment values are replaced by <see cref="EnvVar.Redacted"/>.</summary>
    /// <returns>The redacted copy.</returns>
    public ContainerSpec Redact() => this with { Env = [.. Env.Select(static e => e.IsSecret ? e with { Value = EnvVar.Redacted } : e)] };

    /// <summary>Checks the spec against the documented bounds.</summary>
    /// <returns>Every problem found, each naming the fix; empty when the spec is valid.</returns>
    public IReadOnlyList<string> Validate() => ContainerSpecValidator.Validate(this);

    /// <summary>Throws when <see cref="Validate"/> finds a problem.</summary>
    /// <exception cref="JobValidationException">The spec is invalid; the exception lists every problem.</exception>
    public void ThrowIfInvalid()
    {
        var errors = Validate();
        if (errors.Count > 0)
        {
            throw new JobValidationException(errors);
        }
    }

    private bool PrintMembers(StringBuilder builder)
    {
        builder.Append("Image = ").Append(Image)
            .Append(", Command = [").AppendJoin(", ", Command).Append(']')
            .Append(", Args = [").AppendJoin(", ", Args).Append(']')
            .Append(", Env = [").AppendJoin(", ", Env).Append(']')
            .Append(", Resources = ").Append(Resources);
        return true;
    }
}

/// <summary>An environment variable.</summary>
/// <param name="Name">The name: letters, digits and '_', not starting with a digit.</param>
/// <param name="Value">The value.</param>
/// <param name="IsSecret">Whether the value is a secret: it is never logged, printed or returned by reads.</param>
public sealed record EnvVar(string Name, string Value, bool IsSecret = false)
{
    /// <summary>What a secret value reads as.</summary>
    public const string Redacted = "***";

    /// <summary>Creates a secret variable.</summary>
    /// <param name="name">The name.</param>
    /// <param name="value">The secret value.</param>
    /// <returns>The variable.</returns>
    public static EnvVar Secret(string name, string value) => new(name, value, IsSecret: true);

    /// <inheritdoc />
    public override string ToString() => $"{Name}={(IsSecret ? Redacted : Value)}";

    private bool PrintMembers(StringBuilder builder)
    {
        builder.Append("Name = ").Append(Name).Append(", Value = ").Append(IsSecret ? Redacted : Value).Append(", IsSecret = ").Append(IsSecret);
        return true;
    }
}

/// <summary>The resources a task needs.</summary>
public sealed record ContainerResources
{
    /// <summary>Gets the CPU in millicores (1,000 = one core): 256–60,000, or up to 94,000 with a GPU.</summary>
    /// <value>The default value is 1,000.</value>
    public int CpuMillicores { get; init; } = 1000;

    /// <summary>Gets the memory in MB: 512–350,000, or up to 376,000 with a GPU.</summary>
    /// <value>The default value is 1,024.</value>
    public int MemoryMb { get; init; } = 1024;

    /// <summary>Gets the ephemeral storage in MB, at most 5,000; <see langword="null"/> for the engine's default.</summary>
    public int? EphemeralStorageMb { get; init; }

    /// <summary>Gets the number of GPUs.</summary>
    /// <value>The default value is 0.</value>
    public int Gpus { get; init; }
}

/// <summary>A taint a task tolerates (the Kubernetes toleration).</summary>
/// <param name="Key">The taint key; empty with <see cref="TolerationOperator.Exists"/> tolerates every taint.</param>
/// <param name="Operator">How the value is matched.</param>
/// <param name="Value">The value, for <see cref="TolerationOperator.Equal"/>.</param>
/// <param name="Effect">The taint effect (NoSchedule, PreferNoSchedule, NoExecute), or <see langword="null"/> for all.</param>
public sealed record Toleration(string Key, TolerationOperator Operator = TolerationOperator.Equal, string? Value = null, string? Effect = null);

/// <summary>How a <see cref="Toleration"/> matches a taint's value.</summary>
public enum TolerationOperator
{
    /// <summary>The value must be equal.</summary>
    Equal = 0,

    /// <summary>Any value matches.</summary>
    Exists = 1,
}

/// <summary>The kind of capacity a task runs on.</summary>
public enum Lifecycle
{
    /// <summary>Regular capacity.</summary>
    OnDemand = 0,

    /// <summary>Cheaper capacity that can be taken away (spot or preemptible nodes).</summary>
    Spot = 1,
}
