namespace JobRunner;

/// <summary>
/// A named, versioned container task with typed parameters: a template that runs fill in. Placeholders <c>${name}</c>
/// in the image, command, arguments, environment values and working directory are replaced by parameter values.
/// </summary>
public sealed record JobDefinition
{
    /// <summary>Gets the name: 1–63 letters, digits, '-', '_' or '.'.</summary>
    public required string Name { get; init; }

    /// <summary>Gets other names a run may use.</summary>
    public IReadOnlyList<string> Aliases { get; init; } = [];

    /// <summary>Gets the version, assigned by the store: 1 on create, +1 on every update.</summary>
    public int Version { get; init; }

    /// <summary>Gets a human-readable description.</summary>
    public string? Description { get; init; }

    /// <summary>Gets the container spec, with <c>${name}</c> placeholders.</summary>
    public required ContainerSpec Spec { get; init; }

    /// <summary>Gets the parameters runs fill in.</summary>
    public IReadOnlyList<DefinitionParameter> Parameters { get; init; } = [];

    /// <summary>Gets the retry policy of runs; <see langword="null"/> for the definitions workload's.</summary>
    public RetryPolicy? Retry { get; init; }

    /// <summary>Gets the priority of runs that set none.</summary>
    /// <value>The default value is <see cref="JobRequest.DefaultPriority"/>.</value>
    public int Priority { get; init; } = JobRequest.DefaultPriority;

    /// <summary>Gets when this version was stored.</summary>
    public DateTimeOffset UpdatedAt { get; init; }

    /// <summary>Gets a copy whose secret environment values are redacted.</summary>
    /// <returns>The redacted copy.</returns>
    public JobDefinition Redact() => this with { Spec = Spec.Redact() };
}

/// <summary>The type of a <see cref="DefinitionParameter"/>.</summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Naming", "CA1720:Identifier contains type name", Justification = "The parameter types users write in definitions.")]
public enum ParameterType
{
    /// <summary>Any text.</summary>
    String = 0,

    /// <summary>A whole number.</summary>
    Integer = 1,

    /// <summary>A number.</summary>
    Number = 2,

    /// <summary><c>true</c> or <c>false</c>.</summary>
    Boolean = 3,
}

/// <summary>A typed parameter of a <see cref="JobDefinition"/>.</summary>
/// <param name="Name">The name used in <c>${name}</c>: letters, digits and '_', not starting with a digit.</param>
/// <param name="Type">The type.</param>
/// <param name="Required">Whether a run must supply it (when it has no <paramref name="Default"/>).</param>
/// <param name="Default">The value when a run supplies none.</param>
/// <param name="Description">What it is for.</param>
public sealed record DefinitionParameter(string Name, ParameterType Type = ParameterType.String, bool Required = false, string? Default = null, string? Description = null)
{
    /// <summary>Gets the smallest value of a number.</summary>
    public double? Min { get; init; }

    /// <summary>Gets the largest value of a number.</summary>
    public double? Max { get; init; }

    /// <summary>Gets a regular expression a string must match in full.</summary>
    public string? Pattern { get; init; }

    /// <summary>Gets the only values allowed.</summary>
    public IReadOnlyList<string>? AllowedValues { get; init; }
}

/// <summary>What a run of a definition resolves to, without running it.</summary>
/// <param name="Definition">The definition version that would run (secrets redacted).</param>
/// <param name="Spec">The resolved spec (secrets redacted), with its resources.</param>
/// <param name="Parameters">The parameter values, defaults included.</param>
public sealed record DefinitionPreview(JobDefinition Definition, ContainerSpec Spec, IReadOnlyDictionary<string, string> Parameters);

/// <summary>How to submit one run of a definition.</summary>
public sealed record DefinitionRunOptions
{
    /// <summary>Gets the priority; <see langword="null"/> for the definition's.</summary>
    public int? Priority { get; init; }

    /// <summary>Gets the tenant.</summary>
    /// <value>The default value is <see cref="JobRequest.DefaultTenant"/>.</value>
    public string Tenant { get; init; } = JobRequest.DefaultTenant;

    /// <summary>Gets the dedupe key.</summary>
    public string? DedupeKey { get; init; }

    /// <summary>Gets the earliest start.</summary>
    public DateTimeOffset? NotBefore { get; init; }

    /// <summary>Gets extra labels; the run also gets <c>jobrunner.io/definition</c>.</summary>
    public IReadOnlyDictionary<string, string>? Labels { get; init; }

    /// <summary>Gets the correlation id.</summary>
    public string? CorrelationId { get; init; }
}
