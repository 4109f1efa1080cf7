namespace JobRunner;

/// <summary>
/// Builds the engine that runs container workloads (<see cref="JobRunnerBuilder.AddContainerWorkload"/> and
/// <see cref="JobRunnerBuilder.AddDefinitions"/>). Without one, they run on the local process engine; a provider package
/// (for example <c>UseKubernetes</c>) registers one to run them elsewhere.
/// </summary>
public interface IContainerEngineProvider
{
    /// <summary>Creates an engine that runs the spec <paramref name="resolveSpec"/> returns for each attempt.</summary>
    /// <param name="resolveSpec">Resolves the spec of an attempt (a fixed spec, or a definition's run).</param>
    /// <returns>The engine.</returns>
    IExecutionEngine CreateEngine(Func<WorkloadContext, CancellationToken, ValueTask<ContainerSpec>> resolveSpec);
}
