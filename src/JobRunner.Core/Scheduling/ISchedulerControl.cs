namespace JobRunner;

/// <summary>Changes the scheduler's tenant weights while the host runs.</summary>
public interface ISchedulerControl
{
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
