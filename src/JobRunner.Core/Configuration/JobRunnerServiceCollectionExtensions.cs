using JobRunner;
using JobRunner.Client;
using JobRunner.Configuration;
using JobRunner.Events;
using JobRunner.InMemory;
using JobRunner.Telemetry;
using JobRunner.Worker;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers JobRunner in a service collection.</summary>
public static class JobRunnerServiceCollectionExtensions
{
    /// <summary>
    /// Adds JobRunner: the <see cref="IJobClient"/>, the worker host (a hosted service), and the in-memory store, queue and
    /// log store unless <paramref name="configure"/> chooses other backends. Options are validated when the host starts.
    /// </summary>
    /// <param name="services">The service collection.</param>
    /// <param name="configure">Registers workloads and chooses backends.</param>
    /// <returns>The same service collection so that additional calls can be chained.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="services"/> or <paramref name="configure"/> is <see langword="null"/>.</exception>
    public static IServiceCollection AddJobRunner(this IServiceCollection services, Action<JobRunnerBuilder> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);

        configure(new JobRunnerBuilder(services));

        // The library's defaults go last, with TryAdd, so that the user's choices win.
        services.AddOptions();
        services.TryAddSingleton(TimeProvider.System);
        services.TryAddSingleton<IJobEventBus, JobEventBus>();
        services.TryAddSingleton<InMemoryJobStore>();
        services.TryAddSingleton<InMemoryJobQueue>();
        services.TryAddSingleton<InMemoryLogStore>();
        services.TryAddSingleton<IJobStore>(static sp => sp.GetRequiredService<InMemoryJobStore>());
        services.TryAddSingleton<IJobQueue>(static sp => sp.GetRequiredService<InMemoryJobQueue>());
        services.TryAddSingleton<ILogStore>(static sp => sp.GetRequiredService<InMemoryLogStore>());
        services.TryAddSingleton<IDefinitionStore, JobRunner.Definitions.InMemoryDefinitionStore>();
        services.TryAddSingleton<WorkloadRegistry>();
        services.TryAddSingleton<JobRunner.Scheduling.TenantWeights>();
        services.TryAddSingleton<JobRunner.Scheduling.JobScheduler>();
        services.TryAddSingleton<JobRunner.ISchedulerControl>(static sp => sp.GetRequiredService<JobRunner.Scheduling.JobScheduler>());
        services.TryAddSingleton<JobRunnerTelemetry>();
        services.TryAddSingleton<IJobClient, JobClient>();
        services.TryAddSingleton<JobWorker>();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IHostedService, JobWorker>(static sp => sp.GetRequiredService<JobWorker>()));

        services.AddOptions<WorkerOptions>().ValidateOnStart();
        services.AddOptions<JobRunnerOptions>().ValidateOnStart();
        services.AddOptions<InMemoryStoreOptions>().ValidateOnStart();
        services.AddOptions<ProcessEngineOptions>().ValidateOnStart();
        services.AddOptions<SchedulerOptions>().ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<SchedulerOptions>, SchedulerOptionsValidator>());
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<ProcessEngineOptions>, ProcessEngineOptionsValidator>());
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<WorkerOptions>, WorkerOptionsValidator>());
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<JobRunnerOptions>, JobRunnerOptionsValidator>());
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<InMemoryStoreOptions>, InMemoryStoreOptionsValidator>());
        return services;
    }
}
