using JobRunner.Worker;
using Microsoft.Extensions.DependencyInjection;

namespace JobRunner.Engines;

/// <summary>
/// Runs a code workload in this process. Each attempt has its own DI scope (<see cref="WorkloadContext.Services"/>).
/// A workload registered as a singleton runs as its one instance, and the attempt creates its scope only if the
/// workload reads <see cref="WorkloadContext.Services"/>; any other workload is resolved from a new scope per attempt.
/// </summary>
internal sealed class InProcessEngine<TWorkload>(IServiceProvider services, bool singleton) : IExecutionEngine
    where TWorkload : class, IWorkload
{
    private readonly IServiceScopeFactory _scopes = services.GetRequiredService<IServiceScopeFactory>();

    /// <summary>Gets whether the workload is a singleton: attempts create their scope only when the workload reads it.</summary>
    public bool Singleton => singleton;

    public async ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken)
    {
        if (context is not ActiveAttempt attempt)
        {
            // A context from elsewhere (a test, a host's own runner) brings its own services.
            var scope = _scopes.CreateAsyncScope();
            try
            {
                await scope.ServiceProvider.GetRequiredService<TWorkload>().ExecuteAsync(context, cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                await scope.DisposeAsync().ConfigureAwait(false);
            }

            return;
        }

        try
        {
            var scoped = attempt.OpenScope(lazy: singleton);
            var workload = (scoped ?? services).GetRequiredService<TWorkload>();
            await workload.ExecuteAsync(context, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            await attempt.CloseScopeAsync().ConfigureAwait(false);
        }
    }
}
