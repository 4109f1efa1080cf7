using JobRunner;
using JobRunner.Kubernetes;
using JobRunner.Kubernetes.Engine;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Runs JobRunner container workloads on Kubernetes.</summary>
public static class JobRunnerBuilderKubernetesExtensions
{
    /// <summary>
    /// Makes Kubernetes the container engine: every <see cref="JobRunnerBuilder.AddContainerWorkload"/> and the
    /// definitions of <see cref="JobRunnerBuilder.AddDefinitions"/> run as batch/v1 Jobs. The options (and the
    /// kubeconfig or service account they point to) are validated when the host starts.
    /// </summary>
    /// <param name="builder">The JobRunner builder.</param>
    /// <param name="configure">Sets the namespace, the connection and the failure limits.</param>
    /// <returns>The same builder so that additional calls can be chained.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="builder"/> is <see langword="null"/>.</exception>
    public static JobRunnerBuilder UseKubernetes(this JobRunnerBuilder builder, Action<KubernetesEngineOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        AddServices(builder.Services, configure);
        builder.Services.Replace(ServiceDescriptor.Singleton<IContainerEngineProvider>(static sp => sp.GetRequiredService<KubernetesEngineHost>()));
        return builder;
    }

    /// <summary>
    /// Registers one container workload that runs as batch/v1 Jobs, whatever engine the other container workloads use.
    /// </summary>
    /// <param name="builder">The JobRunner builder.</param>
    /// <param name="name">The name jobs use to ask for it.</param>
    /// <param name="spec">What to run; validated (including Kubernetes names and labels) before any API call.</param>
    /// <param name="configure">Adjusts its retry, timeout and failure classification.</param>
    /// <returns>The same builder so that additional calls can be chained.</returns>
    /// <exception cref="ArgumentNullException">An argument is <see langword="null"/>.</exception>
    /// <exception cref="ArgumentException"><paramref name="spec"/> is invalid; the message lists every problem.</exception>
    public static JobRunnerBuilder AddKubernetesWorkload(this JobRunnerBuilder builder, string name, ContainerSpec spec, Action<WorkloadOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(spec);
        if (JobMapper.Validate(spec) is { Count: > 0 } errors)
        {
            throw new ArgumentException("The container spec is invalid: " + string.Join(" ", errors), nameof(spec));
        }

        AddServices(builder.Services, configure: null);
        return builder.AddWorkload(
            name,
            sp => sp.GetRequiredService<KubernetesEngineHost>().CreateEngine((_, _) => ValueTask.FromResult(spec)),
            options =>
            {
                options.RequiresInput = false;
                configure?.Invoke(options);
            });
    }

    /// <summary>Adjusts the Kubernetes engine's settings.</summary>
    /// <param name="builder">The JobRunner builder.</param>
    /// <param name="configure">The adjustment.</param>
    /// <returns>The same builder so that additional calls can be chained.</returns>
    /// <exception cref="ArgumentNullException">An argument is <see langword="null"/>.</exception>
    public static JobRunnerBuilder ConfigureKubernetes(this JobRunnerBuilder builder, Action<KubernetesEngineOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(configure);
        AddServices(builder.Services, configure);
        return builder;
    }

    private static void AddServices(IServiceCollection services, Action<KubernetesEngineOptions>? configure)
    {
        var options = services.AddOptions<KubernetesEngineOptions>();
        if (configure is not null)
        {
            options.Configure(configure);
        }

        options.ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<KubernetesEngineOptions>, KubernetesEngineOptionsValidator>());
        services.TryAddSingleton(static sp => new KubernetesEngineHost(
            sp.GetRequiredService<IOptions<KubernetesEngineOptions>>(),
            sp.GetService<TimeProvider>() ?? TimeProvider.System,
            sp.GetService<ILoggerFactory>(),
            sp.GetService<IJobStore>()));
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IHostedService, KubernetesSweepStarter>());
    }
}
