using JobRunner.Worker;
using Microsoft.Extensions.DependencyInjection;

namespace JobRunner.Engines;

/// <summary>Runs a code workload in this process: one DI scope and one workload instance per attempt.</summary>
internal sealed class InProcessEngine<TWorkload>(IServiceScopeFactory scopes) : IExecutionEngine
    where TWorkload : class, IWorkload
{
    public async ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken)
    {
        // Disposed by hand rather than with "await using (scope.ConfigureAwait(false))", which boxes the struct scope.
        var scope = scopes.CreateAsyncScope();
        try
        {
            if (context is ActiveAttempt attempt)
            {
                attempt.ScopedServices = scope.ServiceProvider;
            }

            var workload = scope.ServiceProvider.GetRequiredService<TWorkload>();
            await workload.ExecuteAsync(context, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            await scope.DisposeAsync().ConfigureAwait(false);
        }
    }
}
