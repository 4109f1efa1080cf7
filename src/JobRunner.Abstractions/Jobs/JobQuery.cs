namespace JobRunner;

/// <summary>A filter and page request for <see cref="IJobClient.ListAsync"/>. Results are ordered oldest first.</summary>
public sealed record JobQuery
{
    /// <summary>Gets the state to match; <see langword="null"/> matches all.</summary>
    public JobState? State { get; init; }

    /// <summary>Gets the tenant to match; <see langword="null"/> matches all.</summary>
    public string? Tenant { get; init; }

    /// <summary>Gets the workload to match; <see langword="null"/> matches all.</summary>
    public string? Workload { get; init; }

    /// <summary>Gets labels that must all be present with these values.</summary>
    public IReadOnlyDictionary<string, string>? Labels { get; init; }

    /// <summary>Gets the page size, from 1 to 1000.</summary>
    /// <value>The default value is 100.</value>
    public int PageSize { get; init; } = 100;

    /// <summary>Gets the token from the previous page's <see cref="JobPage.ContinuationToken"/>; <see langword="null"/> for the first page.</summary>
    public string? ContinuationToken { get; init; }

    /// <summary>Whether <paramref name="job"/> matches the filter (the paging fields are ignored).</summary>
    /// <param name="job">The job to test.</param>
    /// <returns><see langword="true"/> when every set filter matches.</returns>
    public bool Matches(JobRecord job)
    {
        ArgumentNullException.ThrowIfNull(job);
        return Matches(job.State, job.Request);
    }

    /// <summary>Whether a job in <paramref name="state"/> submitted with <paramref name="request"/> matches the filter.</summary>
    /// <param name="state">The job's state.</param>
    /// <param name="request">The job's request.</param>
    /// <returns><see langword="true"/> when every set filter matches.</returns>
    public bool Matches(JobState state, JobRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (State is { } wanted && state != wanted)
        {
            return false;
        }

        if (Tenant is not null && !string.Equals(request.Tenant, Tenant, StringComparison.Ordinal))
        {
            return false;
        }

        if (Workload is not null && !string.Equals(request.Workload, Workload, StringComparison.Ordinal))
        {
            return false;
        }

        if (Labels is not null)
        {
            foreach (var (key, value) in Labels)
            {
                if (!request.Labels.TryGetValue(key, out var actual) || !string.Equals(actual, value, StringComparison.Ordinal))
                {
                    return false;
                }
            }
        }

        return true;
    }
}

/// <summary>One page of jobs.</summary>
/// <param name="Items">The jobs on this page.</param>
/// <param name="ContinuationToken">The token for the next page; <see langword="null"/> on the last page.</param>
public sealed record JobPage(IReadOnlyList<JobRecord> Items, string? ContinuationToken);
