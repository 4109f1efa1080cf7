using System.Collections.Concurrent;
using Microsoft.Extensions.Options;

namespace JobRunner.Scheduling;

/// <summary>
/// Every tenant's weight: its tier's weight from <see cref="SchedulerOptions"/>, or a weight set at runtime. Shared by
/// the in-memory queue (which hands jobs to the scheduler in weighted turns) and the scheduler itself.
/// </summary>
internal sealed class TenantWeights(IOptions<SchedulerOptions> options)
{
    private readonly SchedulerOptions _options = options.Value;
    private readonly ConcurrentDictionary<string, int> _overrides = new(StringComparer.Ordinal);

    /// <summary>Equal weights for everyone: for components built without options.</summary>
    public static TenantWeights Equal { get; } = new(Options.Create(new SchedulerOptions { DefaultWeight = 1 }));

    public int WeightOf(string tenant)
    {
        if (_overrides.TryGetValue(tenant, out var weight))
        {
            return weight;
        }

        return _options.TenantTiers.TryGetValue(tenant, out var tier) && _options.TierWeights.TryGetValue(tier, out var tierWeight)
            ? tierWeight
            : _options.DefaultWeight;
    }

    public void Set(string tenant, int weight)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(weight, 1);
        _overrides[tenant] = weight;
    }
}
