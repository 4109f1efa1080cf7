namespace JobRunner;

/// <summary>Keeps definitions and all their versions. A provider contract: it returns secret values (engines need them).</summary>
public interface IDefinitionStore
{
    /// <summary>Stores a new definition as version 1.</summary>
    /// <param name="definition">The definition.</param>
    /// <param name="cancellationToken">Cancels the write.</param>
    /// <returns>The stored definition.</returns>
    /// <exception cref="JobValidationException">The name or an alias is taken.</exception>
    ValueTask<JobDefinition> CreateAsync(JobDefinition definition, CancellationToken cancellationToken);

    /// <summary>Stores a new version of an existing definition.</summary>
    /// <param name="definition">The new content; its name picks the definition.</param>
    /// <param name="expectedVersion">The version the caller read, for optimistic concurrency; <see langword="null"/> to skip the check.</param>
    /// <param name="cancellationToken">Cancels the write.</param>
    /// <returns>The stored version.</returns>
    /// <exception cref="JobValidationException">There is no such definition, an alias is taken, or the version moved on.</exception>
    ValueTask<JobDefinition> UpdateAsync(JobDefinition definition, int? expectedVersion, CancellationToken cancellationToken);

    /// <summary>Gets a definition by name or alias.</summary>
    /// <param name="nameOrAlias">The name or an alias.</param>
    /// <param name="version">The version; <see langword="null"/> for the latest.</param>
    /// <param name="cancellationToken">Cancels the read.</param>
    /// <returns>The definition, or <see langword="null"/>.</returns>
    ValueTask<JobDefinition?> GetAsync(string nameOrAlias, int? version, CancellationToken cancellationToken);

    /// <summary>Lists the latest version of every definition, by name.</summary>
    /// <param name="cancellationToken">Cancels the read.</param>
    /// <returns>The definitions.</returns>
    ValueTask<IReadOnlyList<JobDefinition>> ListAsync(CancellationToken cancellationToken);

    /// <summary>Deletes a definition and all its versions. Runs already submitted keep running.</summary>
    /// <param name="name">The name.</param>
    /// <param name="cancellationToken">Cancels the write.</param>
    /// <returns><see langword="true"/> when it existed.</returns>
    ValueTask<bool> DeleteAsync(string name, CancellationToken cancellationToken);
}

/// <summary>The API a host uses for definitions: create, read, update, delete, list, preview and run. Reads redact secrets.</summary>
public interface IJobDefinitions
{
    /// <summary>Validates and stores a new definition.</summary>
    /// <param name="definition">The definition.</param>
    /// <param name="cancellationToken">Cancels the write.</param>
    /// <returns>The stored definition (secrets redacted).</returns>
    /// <exception cref="JobValidationException">The definition is invalid or its name is taken; the exception lists every problem.</exception>
    ValueTask<JobDefinition> CreateAsync(JobDefinition definition, CancellationToken cancellationToken = default);

    /// <summary>Validates and stores a new version.</summary>
    /// <param name="definition">The new content.</param>
    /// <param name="expectedVersion">The version the caller read; <see langword="null"/> to skip the check.</param>
    /// <param name="cancellationToken">Cancels the write.</param>
    /// <returns>The stored version (secrets redacted).</returns>
    /// <exception cref="JobValidationException">The definition is invalid, missing, or the version moved on.</exception>
    ValueTask<JobDefinition> UpdateAsync(JobDefinition definition, int? expectedVersion = null, CancellationToken cancellationToken = default);

    /// <summary>Gets a definition by name or alias (secrets redacted).</summary>
    /// <param name="nameOrAlias">The name or an alias.</param>
    /// <param name="version">The version; <see langword="null"/> for the latest.</param>
    /// <param name="cancellationToken">Cancels the read.</param>
    /// <returns>The definition, or <see langword="null"/>.</returns>
    ValueTask<JobDefinition?> GetAsync(string nameOrAlias, int? version = null, CancellationToken cancellationToken = default);

    /// <summary>Lists the latest version of every definition (secrets redacted).</summary>
    /// <param name="cancellationToken">Cancels the read.</param>
    /// <returns>The definitions.</returns>
    ValueTask<IReadOnlyList<JobDefinition>> ListAsync(CancellationToken cancellationToken = default);

    /// <summary>Deletes a definition.</summary>
    /// <param name="name">The name.</param>
    /// <param name="cancellationToken">Cancels the write.</param>
    /// <returns><see langword="true"/> when it existed.</returns>
    ValueTask<bool> DeleteAsync(string name, CancellationToken cancellationToken = default);

    /// <summary>Resolves a run without running it: the spec, its resources and the parameter values.</summary>
    /// <param name="nameOrAlias">The name or an alias.</param>
    /// <param name="parameters">The parameter values.</param>
    /// <param name="version">The version; <see langword="null"/> for the latest.</param>
    /// <param name="cancellationToken">Cancels the read.</param>
    /// <returns>The preview (secrets redacted).</returns>
    /// <exception cref="JobValidationException">The definition does not exist or a parameter is invalid.</exception>
    ValueTask<DefinitionPreview> PreviewAsync(string nameOrAlias, IReadOnlyDictionary<string, string>? parameters = null, int? version = null, CancellationToken cancellationToken = default);

    /// <summary>Validates the parameters and submits a run of the latest version.</summary>
    /// <param name="nameOrAlias">The name or an alias.</param>
    /// <param name="parameters">The parameter values.</param>
    /// <param name="options">Priority, tenant, labels and other run options.</param>
    /// <param name="cancellationToken">Cancels the submit.</param>
    /// <returns>The submitted job.</returns>
    /// <exception cref="JobValidationException">The definition does not exist or a parameter is invalid; nothing was submitted.</exception>
    ValueTask<SubmitResult> RunAsync(string nameOrAlias, IReadOnlyDictionary<string, string>? parameters = null, DefinitionRunOptions? options = null, CancellationToken cancellationToken = default);
}
