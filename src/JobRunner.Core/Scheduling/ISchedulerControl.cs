namespace JobRunner;

/// <summary>Reads and changes the scheduler's tenant weights while the host runs.</summary>
public interface ISchedulerControl
{
    /// <summary>
    /// Gets a tenant's weight now: the weight set by <see cref="SetTenantWeight"/> or <see cref="SetTenantTier"/>, else its
    /// tier's weight (<see cref="SchedulerOptions.TenantTiers"/>), else <see cref="SchedulerOptions.DefaultWeight"/>.
    /// Queues that hand jobs out in proportion to the weights read it.
    /// </summary>
    /// <param name="tenant">The tenant.</param>
    /// <returns>The weight, 1 or more.</returns>
    int GetTenantWeight(string tenant);

    /// <summary>Sets a tenant's weight, overriding its tier, from the next decision on.</summary>
    /// <param name="tenant">The tenant.</param>
    /// <param name="weight">The weight, 1 or more.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="weight"/> is less than 1.</exception>
    void SetTenantWeight(string tenant, int weight);

    /// <summary>Moves a tenant to a tier, from the next decision on.</summary>
    /// <param name="tenant">The tenant.</param>
    /// <param name="tier">A tier of <see cref="SchedulerOptions.TierWeights"/>.</param>
    /// <exception cref="JobValidationException">The tier is unknown.</exception>
    void SetTenantTier(string tenant, string tier);
}
