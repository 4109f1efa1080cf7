using JobRunner.Worker;
using Microsoft.Extensions.DependencyInjection;

namespace JobRunner.Engines;

/// <summary>How an in-process engine gets the workload instance an attempt runs.</summary>
internal enum WorkloadActivation
{
    /// <summary>Resolved from a new DI scope per attempt: the general case (scoped dependencies, factory registrations).</summary>
    Scoped = 0,

    /// <summary>
    /// Constructed per attempt from the root's singletons (a transient registered by type, with one public constructor
    /// whose every parameter is a singleton): the attempt creates its scope only if the workload reads
    /// <see cref="WorkloadContext.Services"/>, and disposes the instance itself.
    /// </summary>
    Constructed = 1,

    /// <summary>One instance for every attempt; the attempt creates its scope only if the workload reads it.</summary>
    Singleton = 2,
}

/// <summary>
/// Runs a code workload in this process. Each attempt has its own DI scope (<see cref="WorkloadContext.Services"/>) and,
/// unless the workload is a singleton, its own instance. A workload that needs no scope to be built (a singleton, or a
/// transient whose dependencies are all singletons: see <see cref="WorkloadActivation"/>) runs without one, and the
/// attempt creates its scope only if the workload reads <see cref="WorkloadContext.Services"/>.
/// </summary>
internal sealed class InProcessEngine<TWorkload> : IExecutionEngine
    where TWorkload : class, IWorkload
{
    private readonly IServiceProvider _services;
    private readonly IServiceScopeFactory _scopes;
    private readonly ObjectFactory? _construct;

    public InProcessEngine(IServiceProvider services, WorkloadActivation activation, Type? implementation = null)
    {
        _services = services;
        _scopes = services.GetRequiredService<IServiceScopeFactory>();
        Activation = activation;
        if (activation == WorkloadActivation.Constructed)
        {
            _construct = ActivatorUtilities.CreateFactory(implementation ?? typeof(TWorkload), Type.EmptyTypes);
        }
    }

    /// <summary>Gets how attempts get their workload instance.</summary>
    public WorkloadActivation Activation { get; }

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

        object? owned = null;
        try
        {
            TWorkload workload;
            if (_construct is not null)
            {
                attempt.OpenScope(lazy: true);
                workload = (TWorkload)(owned = _construct(_services, null));
            }
            else
            {
                var scoped = attempt.OpenScope(lazy: Activation == WorkloadActivation.Singleton);
                workload = (scoped ?? _services).GetRequiredService<TWorkload>();
            }

            await workload.ExecuteAsync(context, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            // The container disposes in the reverse order of creation: what the workload resolved from its (lazy) scope
            // goes first, then the workload, which existed before any of it.
            try
            {
                await attempt.CloseScopeAsync().ConfigureAwait(false);
            }
            finally
            {
                if (owned is IAsyncDisposable asyncDisposable)
                {
                    await asyncDisposable.DisposeAsync().ConfigureAwait(false);
                }
                else
                {
                    (owned as IDisposable)?.Dispose();
                }
            }
        }
    }
}

/// <summary>Reads from the service collection how <see cref="InProcessEngine{TWorkload}"/> can get a workload's instances.</summary>
internal static class WorkloadActivations
{
    // Types the container answers itself, whatever the collection says: the scope's provider, not the root's.
    private static readonly Type[] s_containerTypes =
    [
        typeof(IServiceProvider), typeof(IKeyedServiceProvider), typeof(IServiceScopeFactory),
        typeof(IServiceProviderIsService), typeof(IServiceProviderIsKeyedService),
    ];

    /// <summary>
    /// The activation for <paramref name="workload"/> as Microsoft's container would resolve it from
    /// <paramref name="services"/> (the last registration decides), and the type to construct for
    /// <see cref="WorkloadActivation.Constructed"/>. Anything this cannot prove needs no scope (a factory, a keyed,
    /// scoped or transient dependency, several constructors, a parameter it does not find registered) falls back to
    /// <see cref="WorkloadActivation.Scoped"/>, as does any other container (<paramref name="root"/>), whose
    /// registrations the collection may not show.
    /// </summary>
    public static (WorkloadActivation Activation, Type? Implementation) Of(IServiceCollection services, Type workload, IServiceProvider? root = null)
    {
        if (root is not null && root.GetType().Assembly.GetName().Name != "Microsoft.Extensions.DependencyInjection")
        {
            return (Last(services, workload)?.Lifetime == ServiceLifetime.Singleton ? WorkloadActivation.Singleton : WorkloadActivation.Scoped, null);
        }

        var descriptor = Last(services, workload);
        if (descriptor is null)
        {
            return (WorkloadActivation.Scoped, null);
        }

        if (descriptor.Lifetime == ServiceLifetime.Singleton)
        {
            return (WorkloadActivation.Singleton, null);
        }

        if (descriptor.Lifetime != ServiceLifetime.Transient || descriptor.ImplementationType is not { IsAbstract: false } type)
        {
            return (WorkloadActivation.Scoped, null);
        }

        var constructors = type.GetConstructors();
        if (constructors.Length != 1)
        {
            return (WorkloadActivation.Scoped, null);
        }

        foreach (var parameter in constructors[0].GetParameters())
        {
            if (parameter.IsDefined(typeof(FromKeyedServicesAttribute), inherit: true)
                || parameter.IsDefined(typeof(ServiceKeyAttribute), inherit: true)
                || !IsSingleton(services, parameter.ParameterType))
            {
                return (WorkloadActivation.Scoped, null);
            }
        }

        return (WorkloadActivation.Constructed, type);
    }

    /// <summary>
    /// Whether the container resolves <paramref name="type"/> as a singleton: its last registration, or, for a closed
    /// generic without one, every registration of its open form (the container may skip one whose constraints fail).
    /// </summary>
    private static bool IsSingleton(IServiceCollection services, Type type)
    {
        if (type.IsByRef || type.IsPointer || Array.IndexOf(s_containerTypes, type) >= 0)
        {
            return false;
        }

        if (Last(services, type) is { } exact)
        {
            return exact.Lifetime == ServiceLifetime.Singleton;
        }

        if (!type.IsConstructedGenericType)
        {
            return false;
        }

        var open = type.GetGenericTypeDefinition();
        var found = false;
        foreach (var descriptor in services)
        {
            if (descriptor.ServiceType == open && !descriptor.IsKeyedService)
            {
                if (descriptor.Lifetime != ServiceLifetime.Singleton)
                {
                    return false;
                }

                found = true;
            }
        }

        return found;
    }

    private static ServiceDescriptor? Last(IServiceCollection services, Type type)
    {
        for (var i = services.Count - 1; i >= 0; i--)
        {
            var descriptor = services[i];
            if (descriptor.ServiceType == type && !descriptor.IsKeyedService)
            {
                return descriptor;
            }
        }

        return null;
    }
}
