using System.Text.Json;

namespace JobRunner.Definitions;

/// <summary>What a definition run carries as its job input: a reference, never the spec (so no secret is stored with the job).</summary>
/// <param name="Definition">The definition's name.</param>
/// <param name="Version">Its version.</param>
/// <param name="Parameters">The run's parameters.</param>
/// <param name="Stored">When that version was stored: a definition deleted and created again under the name has a version of
/// the same number, stored later (absent in runs submitted before it was recorded).</param>
internal sealed record DefinitionRun(string Definition, int Version, IReadOnlyDictionary<string, string> Parameters, DateTimeOffset? Stored = null);

/// <summary>The <see cref="IJobDefinitions"/> service: validates, stores, previews and submits runs; reads redact secrets.</summary>
internal sealed class JobDefinitions(IDefinitionStore store, IJobClient client) : IJobDefinitions
{
    /// <summary>The workload that runs definitions with the process engine.</summary>
    public const string WorkloadName = "definition-run";

    /// <summary>The label every run carries: the definition's name.</summary>
    public const string DefinitionLabel = "jobrunner.io/definition";

    public async ValueTask<JobDefinition> CreateAsync(JobDefinition definition, CancellationToken cancellationToken = default)
    {
        DefinitionResolver.Validate(definition);
        return (await store.CreateAsync(definition, cancellationToken).ConfigureAwait(false)).Redact();
    }

    public async ValueTask<JobDefinition> UpdateAsync(JobDefinition definition, int? expectedVersion = null, CancellationToken cancellationToken = default)
    {
        DefinitionResolver.Validate(definition);
        return (await store.UpdateAsync(definition, expectedVersion, cancellationToken).ConfigureAwait(false)).Redact();
    }

    public async ValueTask<JobDefinition?> GetAsync(string nameOrAlias, int? version = null, CancellationToken cancellationToken = default)
        => (await store.GetAsync(nameOrAlias, version, cancellationToken).ConfigureAwait(false))?.Redact();

    public async ValueTask<IReadOnlyList<JobDefinition>> ListAsync(CancellationToken cancellationToken = default)
        => [.. (await store.ListAsync(cancellationToken).ConfigureAwait(false)).Select(static d => d.Redact())];

    public ValueTask<bool> DeleteAsync(string name, CancellationToken cancellationToken = default) => store.DeleteAsync(name, cancellationToken);

    public async ValueTask<DefinitionPreview> PreviewAsync(string nameOrAlias, IReadOnlyDictionary<string, string>? parameters = null, int? version = null, CancellationToken cancellationToken = default)
    {
        var definition = await FindAsync(nameOrAlias, version, cancellationToken).ConfigureAwait(false);
        var (spec, values) = DefinitionResolver.Resolve(definition, parameters);
        return new DefinitionPreview(definition.Redact(), spec.Redact(), values);
    }

    public async ValueTask<SubmitResult> RunAsync(string nameOrAlias, IReadOnlyDictionary<string, string>? parameters = null, DefinitionRunOptions? options = null, CancellationToken cancellationToken = default)
    {
        options ??= new DefinitionRunOptions();
        var definition = await FindAsync(nameOrAlias, version: null, cancellationToken).ConfigureAwait(false);
        var (_, values) = DefinitionResolver.Resolve(definition, parameters);
        var labels = new Dictionary<string, string>(options.Labels ?? new Dictionary<string, string>(), StringComparer.Ordinal)
        {
            [DefinitionLabel] = definition.Name,
        };
        var request = JobRequest.Create(WorkloadName, new DefinitionRun(definition.Name, definition.Version, values, definition.UpdatedAt)) with
        {
            Priority = options.Priority ?? definition.Priority,
            Tenant = options.Tenant,
            DedupeKey = options.DedupeKey,
            NotBefore = options.NotBefore,
            Labels = labels,
            CorrelationId = options.CorrelationId,
            Retry = definition.Retry,
        };
        return await client.SubmitAsync(request, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Resolves the spec of a run at execution time, secrets included (the engine's side).</summary>
    public static async ValueTask<ContainerSpec> ResolveForRunAsync(IDefinitionStore store, WorkloadContext context, CancellationToken cancellationToken)
    {
        var run = context.GetInput<DefinitionRun>();
        // The very version the run was submitted with: not one of another definition that took the name as an alias,
        // nor one of a definition created again under the name.
        var definition = await store.GetAsync(run.Definition, run.Version, cancellationToken).ConfigureAwait(false);
        if (definition is null || definition.Name != run.Definition || (run.Stored is { } stored && definition.UpdatedAt != stored))
        {
            throw new PermanentJobException($"Definition '{run.Definition}' version {run.Version} no longer exists; it was deleted (or deleted and created again) after this run was submitted.");
        }

        return DefinitionResolver.Resolve(definition, run.Parameters).Spec;
    }

    private async ValueTask<JobDefinition> FindAsync(string nameOrAlias, int? version, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(nameOrAlias);
        return await store.GetAsync(nameOrAlias, version, cancellationToken).ConfigureAwait(false)
            ?? throw new JobValidationException([$"Definition '{nameOrAlias}'{(version is { } v ? $" version {v}" : "")} does not exist. Create it with IJobDefinitions.CreateAsync, or check the name."]);
    }
}
