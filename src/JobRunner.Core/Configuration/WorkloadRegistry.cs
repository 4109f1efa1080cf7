using System.Collections.Frozen;

namespace JobRunner.Configuration;

/// <summary>The registered workloads with their engines and resolved policies, built once.</summary>
internal sealed class WorkloadRegistry : IDisposable
{
    private readonly FrozenDictionary<string, RegisteredWorkload> _workloads;

    public WorkloadRegistry(IEnumerable<WorkloadRegistration> registrations, IServiceProvider services, Microsoft.Extensions.Options.IOptions<JobRunnerOptions> options)
    {
        var defaults = options.Value;
        var map = new Dictionary<string, RegisteredWorkload>(StringComparer.Ordinal);
        foreach (var registration in registrations)
        {
            // Duplicates are reported by the options validator at start; the last one wins here.
            map[registration.Name] = new RegisteredWorkload(
                registration,
                registration.EngineFactory(services),
                registration.Options.Retry ?? defaults.DefaultRetry,
                registration.Options.Timeout ?? defaults.DefaultTimeout);
        }

        _workloads = map.ToFrozenDictionary(StringComparer.Ordinal);
        Names = [.. _workloads.Keys.Order(StringComparer.Ordinal)];
    }

    public IReadOnlyList<string> Names { get; }

    public RegisteredWorkload? Find(string name) => _workloads.GetValueOrDefault(name);

    /// <summary>Disposes the engines this registry built (the process engine kills what still runs).</summary>
    public void Dispose()
    {
        foreach (var workload in _workloads.Values)
        {
            (workload.Engine as IDisposable)?.Dispose();
        }
    }
}

/// <summary>A workload ready to run.</summary>
internal sealed class RegisteredWorkload(WorkloadRegistration registration, IExecutionEngine engine, IRetryStrategy retry, TimeSpan? timeout)
{
    public WorkloadRegistration Registration { get; } = registration;

    public string Name => Registration.Name;

    public IExecutionEngine Engine { get; } = engine;

    public IRetryStrategy Retry { get; } = retry;

    public TimeSpan? Timeout { get; } = timeout;

    public IFailureClassifier Classifier => Registration.Options.Classifier;
}
