using JobRunner.Configuration;
using JobRunner.Engines;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;

namespace JobRunner;

/// <summary>
/// Configures JobRunner inside <c>services.AddJobRunner(runner => …)</c>. <c>Add*</c> appends, <c>Use*</c> replaces the
/// single backend, <c>Configure*</c> adjusts settings. Whatever is not chosen falls back to the in-memory defaults.
/// </summary>
public sealed class JobRunnerBuilder
{
    internal JobRunnerBuilder(IServiceCollection services)
    {
        Services = services;
    }

    /// <summary>Gets the service collection, for provider packages that extend the builder.</summary>
    public IServiceCollection Services { get; }

    /// <summary>Registers a code workload, run in-process with a new DI scope and instance per attempt.</summary>
    /// <typeparam name="TWorkload">The workload class.</typeparam>
    /// <param name="name">The name jobs use to ask for it: 1–63 letters, digits, '-', '_' or '.'.</param>
    /// <param name="configure">Adjusts its retry, timeout and failure classification.</param>
    /// <returns>The same builder so that additional calls can be chained.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="name"/> is <see langword="null"/>.</exception>
    public JobRunnerBuilder AddWorkload<TWorkload>(string name, Action<WorkloadOptions>? configure = null)
        where TWorkload : class, IWorkload
    {
        ArgumentNullException.ThrowIfNull(name);
        Services.TryAddTransient<TWorkload>();
        return Add(name, typeof(TWorkload), static sp => new InProcessEngine<TWorkload>(sp.GetRequiredService<IServiceScopeFactory>()), configure);
    }

    /// <summary>Registers a workload run by an engine of its own (a process, a container, a remote service).</summary>
    /// <param name="name">The name jobs use to ask for it: 1–63 letters, digits, '-', '_' or '.'.</param>
    /// <param name="engineFactory">Builds the engine once, from the root services.</param>
    /// <param name="configure">Adjusts its retry, timeout and failure classification.</param>
    /// <returns>The same builder so that additional calls can be chained.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="name"/> or <paramref name="engineFactory"/> is <see langword="null"/>.</exception>
    public JobRunnerBuilder AddWorkload(string name, Func<IServiceProvider, IExecutionEngine> engineFactory, Action<WorkloadOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(engineFactory);
        return Add(name, workloadType: null, engineFactory, configure);
    }

    /// <summary>Adjusts the worker host: slots, leases, heartbeats, grace periods.</summary>
    /// <param name="configure">The adjustment.</param>
    /// <returns>The same builder so that additional calls can be chained.</returns>
    public JobRunnerBuilder ConfigureWorker(Action<WorkerOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(configure);
        Services.Configure(configure);
        return this;
    }

    /// <summary>Adjusts the defaults every workload inherits: retry, timeout, serializer.</summary>
    /// <param name="configure">The adjustment.</param>
    /// <returns>The same builder so that additional calls can be chained.</returns>
    public JobRunnerBuilder ConfigureDefaults(Action<JobRunnerOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(configure);
        Services.Configure(configure);
        return this;
    }

    /// <summary>Uses the in-memory store, queue and log store (the default), and adjusts their bounds.</summary>
    /// <param name="configure">Adjusts the bounds.</param>
    /// <returns>The same builder so that additional calls can be chained.</returns>
    public JobRunnerBuilder UseInMemory(Action<InMemoryStoreOptions>? configure = null)
    {
        if (configure is not null)
        {
            Services.Configure(configure);
        }

        return UseStore(static sp => sp.GetRequiredService<InMemory.InMemoryJobStore>())
            .UseQueue(static sp => sp.GetRequiredService<InMemory.InMemoryJobQueue>())
            .UseLogStore(static sp => sp.GetRequiredService<InMemory.InMemoryLogStore>());
    }

    /// <summary>Replaces the job store.</summary>
    /// <param name="factory">Builds the store once.</param>
    /// <returns>The same builder so that additional calls can be chained.</returns>
    public JobRunnerBuilder UseStore(Func<IServiceProvider, IJobStore> factory)
    {
        ArgumentNullException.ThrowIfNull(factory);
        Services.Replace(ServiceDescriptor.Singleton(factory));
        return this;
    }

    /// <summary>Replaces the job queue.</summary>
    /// <param name="factory">Builds the queue once.</param>
    /// <returns>The same builder so that additional calls can be chained.</returns>
    public JobRunnerBuilder UseQueue(Func<IServiceProvider, IJobQueue> factory)
    {
        ArgumentNullException.ThrowIfNull(factory);
        Services.Replace(ServiceDescriptor.Singleton(factory));
        return this;
    }

    /// <summary>Replaces the log store.</summary>
    /// <param name="factory">Builds the log store once.</param>
    /// <returns>The same builder so that additional calls can be chained.</returns>
    public JobRunnerBuilder UseLogStore(Func<IServiceProvider, ILogStore> factory)
    {
        ArgumentNullException.ThrowIfNull(factory);
        Services.Replace(ServiceDescriptor.Singleton(factory));
        return this;
    }

    private JobRunnerBuilder Add(string name, Type? workloadType, Func<IServiceProvider, IExecutionEngine> engineFactory, Action<WorkloadOptions>? configure)
    {
        var options = new WorkloadOptions();
        configure?.Invoke(options);
        Services.AddSingleton(new WorkloadRegistration(name, workloadType, options, engineFactory));
        return this;
    }
}
