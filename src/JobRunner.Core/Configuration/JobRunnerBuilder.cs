using JobRunner.Configuration;
using JobRunner.Definitions;
using JobRunner.Engines;
using JobRunner.Engines.Process;
using JobRunner.Logging;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;

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

    /// <summary>
    /// Registers a code workload, run in-process. Each attempt has its own DI scope and, unless
    /// <typeparamref name="TWorkload"/> is registered as a singleton, its own instance of the workload (registered as
    /// transient when not registered yet). A singleton workload runs every attempt as its one instance. A singleton, or
    /// a transient registered by type with one public constructor whose parameters are all singletons (for example
    /// <c>ILogger&lt;T&gt;</c>, <c>IOptions&lt;T&gt;</c>, <c>IHttpClientFactory</c>), is built without a scope, and the
    /// attempt creates its scope only when the workload reads <see cref="WorkloadContext.Services"/>: the cheapest way
    /// to run a workload. Any other workload (a scoped or transient dependency such as a typed <c>HttpClient</c> or
    /// <c>IOptionsSnapshot&lt;T&gt;</c>, a factory registration, another DI container) is resolved from the attempt's
    /// scope.
    /// </summary>
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
        var services = Services;
        return Add(name, typeof(TWorkload), sp =>
        {
            // Read when the container builds the engine: registrations made after AddWorkload count too.
            var (activation, implementation) = WorkloadActivations.Of(services, typeof(TWorkload), sp);
            return new InProcessEngine<TWorkload>(sp, activation, implementation);
        }, configure);
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

    /// <summary>
    /// Registers a container workload run by the container engine: the local process engine (each job runs
    /// <paramref name="spec"/> as a child process; the image only names the environment locally) unless a provider
    /// registered an <see cref="IContainerEngineProvider"/> (e.g. <c>UseKubernetes</c>). The spec is validated when the host starts.
    /// </summary>
    /// <param name="name">The name jobs use to ask for it.</param>
    /// <param name="spec">What to run.</param>
    /// <param name="configure">Adjusts its retry, timeout and failure classification.</param>
    /// <returns>The same builder so that additional calls can be chained.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="name"/> or <paramref name="spec"/> is <see langword="null"/>.</exception>
    public JobRunnerBuilder AddContainerWorkload(string name, ContainerSpec spec, Action<WorkloadOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(spec);
        var options = new WorkloadOptions { RequiresInput = false };
        configure?.Invoke(options);
        Services.AddSingleton(new WorkloadRegistration(name, workloadType: null, options, sp => CreateProcessEngine(sp, (_, _) => ValueTask.FromResult(spec))) { Spec = spec });
        return this;
    }

    /// <summary>
    /// Adds definitions: <see cref="IJobDefinitions"/> (create, read, update, delete, list, preview, run) over the
    /// in-memory definition store unless <see cref="UseDefinitionStore"/> picks another, and the workload that runs them
    /// with the container engine (the local process engine unless a provider registered an <see cref="IContainerEngineProvider"/>).
    /// </summary>
    /// <param name="configure">Adjusts the retry, timeout and failure classification of every run.</param>
    /// <returns>The same builder so that additional calls can be chained.</returns>
    public JobRunnerBuilder AddDefinitions(Action<WorkloadOptions>? configure = null)
    {
        Services.TryAddSingleton<IJobDefinitions, JobDefinitions>();
        return Add(
            JobDefinitions.WorkloadName,
            workloadType: null,
            static sp =>
            {
                var store = sp.GetRequiredService<IDefinitionStore>();
                return CreateProcessEngine(sp, (context, ct) => JobDefinitions.ResolveForRunAsync(store, context, ct));
            },
            configure);
    }

    /// <summary>Adjusts the local process engine: kill grace period, exit code classification, environment.</summary>
    /// <param name="configure">The adjustment.</param>
    /// <returns>The same builder so that additional calls can be chained.</returns>
    public JobRunnerBuilder ConfigureProcessEngine(Action<ProcessEngineOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(configure);
        Services.Configure(configure);
        return this;
    }

    /// <summary>Replaces the definition store.</summary>
    /// <param name="factory">Builds the store once.</param>
    /// <returns>The same builder so that additional calls can be chained.</returns>
    public JobRunnerBuilder UseDefinitionStore(Func<IServiceProvider, IDefinitionStore> factory)
    {
        ArgumentNullException.ThrowIfNull(factory);
        Services.Replace(ServiceDescriptor.Singleton(factory));
        return this;
    }

    /// <summary>
    /// Keeps job logs in files under <paramref name="directory"/>: append-only, one file per job and attempt, readable
    /// after the job finished and after a host restart.
    /// </summary>
    /// <param name="directory">The directory; created if missing.</param>
    /// <returns>The same builder so that additional calls can be chained.</returns>
    public JobRunnerBuilder UseFileLogs(string directory)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        return UseLogStore(_ => new FileLogStore(directory));
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

    /// <summary>Adjusts the scheduler: tenant tiers and weights, concurrency limits, lookahead.</summary>
    /// <param name="configure">The adjustment.</param>
    /// <returns>The same builder so that additional calls can be chained.</returns>
    public JobRunnerBuilder ConfigureScheduler(Action<SchedulerOptions> configure)
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

    /// <summary>
    /// Keeps checkpoints in <paramref name="factory"/>'s store instead of the job records: attempts start from its newest
    /// valid checkpoint and save there. Before each save the worker renews the lease through the job store, so a writer
    /// whose lease was taken over is refused before it writes.
    /// </summary>
    /// <param name="factory">Builds the checkpoint store once.</param>
    /// <returns>The same builder so that additional calls can be chained.</returns>
    public JobRunnerBuilder UseCheckpointStore(Func<IServiceProvider, ICheckpointStore> factory)
    {
        ArgumentNullException.ThrowIfNull(factory);
        Services.Replace(ServiceDescriptor.Singleton(factory));
        return this;
    }

    private static IExecutionEngine CreateProcessEngine(IServiceProvider services, Func<WorkloadContext, CancellationToken, ValueTask<ContainerSpec>> resolve)
        => services.GetService<IContainerEngineProvider>() is { } provider
            ? provider.CreateEngine(resolve)
            : new LocalProcessEngine(resolve, services.GetRequiredService<IOptions<ProcessEngineOptions>>().Value, services.GetRequiredService<TimeProvider>(), services.GetRequiredService<IOptions<WorkerOptions>>().Value.ShutdownGracePeriod);

    private JobRunnerBuilder Add(string name, Type? workloadType, Func<IServiceProvider, IExecutionEngine> engineFactory, Action<WorkloadOptions>? configure)
    {
        var options = new WorkloadOptions();
        configure?.Invoke(options);
        Services.AddSingleton(new WorkloadRegistration(name, workloadType, options, engineFactory));
        return this;
    }
}
