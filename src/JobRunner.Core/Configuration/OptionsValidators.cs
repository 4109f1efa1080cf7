using Microsoft.Extensions.Options;

namespace JobRunner.Configuration;

/// <summary>Validates <see cref="WorkerOptions"/> at host start; every message names the fix.</summary>
internal sealed class WorkerOptionsValidator : IValidateOptions<WorkerOptions>
{
    public ValidateOptionsResult Validate(string? name, WorkerOptions options)
    {
        var errors = new List<string>();
        if (string.IsNullOrWhiteSpace(options.WorkerId))
        {
            errors.Add("WorkerOptions.WorkerId is empty. Set it to a name that is unique in the fleet, or keep the default.");
        }

        if (options.Slots < 1)
        {
            errors.Add($"WorkerOptions.Slots is {options.Slots}. Set it to 1 or more: the number of attempts this host runs at once.");
        }

        // Every one of these becomes a timer's due time somewhere (or is added to a date): at most what a timer takes.
        var max = TimerLimits.Max;
        if (options.LeaseDuration <= TimeSpan.Zero || options.LeaseDuration > max)
        {
            errors.Add($"WorkerOptions.LeaseDuration is {options.LeaseDuration}. Set it to a positive time of at most {max.TotalDays:0.#} days, e.g. 30 seconds.");
        }

        if (options.HeartbeatInterval <= TimeSpan.Zero || options.HeartbeatInterval > options.LeaseDuration / 2)
        {
            errors.Add($"WorkerOptions.HeartbeatInterval is {options.HeartbeatInterval} with a LeaseDuration of {options.LeaseDuration}. Set it above zero and to at most half the lease duration, so that one late heartbeat does not lose the lease.");
        }

        if (options.ReclaimInterval <= TimeSpan.Zero || options.ReclaimInterval > max)
        {
            errors.Add($"WorkerOptions.ReclaimInterval is {options.ReclaimInterval}. Set it to a positive time of at most {max.TotalDays:0.#} days, e.g. 5 seconds.");
        }

        if (options.CancellationGracePeriod < TimeSpan.Zero || options.CancellationGracePeriod > max)
        {
            errors.Add($"WorkerOptions.CancellationGracePeriod is {options.CancellationGracePeriod}. Set it to zero or more, at most {max.TotalDays:0.#} days.");
        }

        if (options.ShutdownGracePeriod < TimeSpan.Zero || options.ShutdownGracePeriod > max)
        {
            errors.Add($"WorkerOptions.ShutdownGracePeriod is {options.ShutdownGracePeriod}. Set it to zero or more, at most {max.TotalDays:0.#} days.");
        }

        foreach (var (key, value) in options.Labels)
        {
            if (!Names.IsValidLabelKey(key))
            {
                errors.Add($"WorkerOptions.Labels has the key '{key}', which is not valid: use an optional DNS prefix and '/', then a name ({Names.NameRule}).");
            }

            if (!Names.IsValidLabelValue(value))
            {
                errors.Add($"WorkerOptions.Labels['{key}'] is '{value}', which is not valid: use an empty value or a name ({Names.NameRule}).");
            }
        }

        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }
}

/// <summary>Validates <see cref="JobRunnerOptions"/> and every workload registration at host start.</summary>
internal sealed class JobRunnerOptionsValidator(IEnumerable<WorkloadRegistration> registrations) : IValidateOptions<JobRunnerOptions>
{
    public ValidateOptionsResult Validate(string? name, JobRunnerOptions options)
    {
        var errors = new List<string>();
        if (options.DefaultRetry is null)
        {
            errors.Add("JobRunnerOptions.DefaultRetry is null. Set it to a RetryPolicy, e.g. RetryPolicy.None to never retry.");
        }

        if (options.DefaultTimeout <= TimeSpan.Zero)
        {
            errors.Add($"JobRunnerOptions.DefaultTimeout is {options.DefaultTimeout}. Set it to a positive time, or to null for no timeout.");
        }

        if (options.SerializerOptions is null)
        {
            errors.Add("JobRunnerOptions.SerializerOptions is null. Set it to a JsonSerializerOptions, or keep the default (JsonSerializerOptions.Web).");
        }

        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var registration in registrations)
        {
            if (!Names.IsValidName(registration.Name))
            {
                errors.Add($"Workload name '{registration.Name}' is not valid: {Names.NameRule}.");
            }
            else if (!seen.Add(registration.Name))
            {
                errors.Add($"Workload '{registration.Name}' is registered more than once. Give each AddWorkload call its own name.");
            }

            foreach (var problem in registration.Spec?.Validate() ?? [])
            {
                errors.Add($"Workload '{registration.Name}': {problem}");
            }

            if (registration.Options.Timeout <= TimeSpan.Zero)
            {
                errors.Add($"Workload '{registration.Name}': Timeout is {registration.Options.Timeout}. Set it to a positive time, or to null for the default.");
            }
        }

        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }
}

/// <summary>Validates <see cref="InMemoryStoreOptions"/> at host start.</summary>
internal sealed class InMemoryStoreOptionsValidator : IValidateOptions<InMemoryStoreOptions>
{
    public ValidateOptionsResult Validate(string? name, InMemoryStoreOptions options)
    {
        var errors = new List<string>();
        if (options.MaxFinishedJobs < 1)
        {
            errors.Add($"InMemoryStoreOptions.MaxFinishedJobs is {options.MaxFinishedJobs}. Set it to 1 or more: how many finished jobs to keep readable.");
        }

        if (options.MaxLogLinesPerJob < 1)
        {
            errors.Add($"InMemoryStoreOptions.MaxLogLinesPerJob is {options.MaxLogLinesPerJob}. Set it to 1 or more: how many log lines to keep per job.");
        }

        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }
}

/// <summary>Validates <see cref="ProcessEngineOptions"/> at host start.</summary>
internal sealed class ProcessEngineOptionsValidator : IValidateOptions<ProcessEngineOptions>
{
    public ValidateOptionsResult Validate(string? name, ProcessEngineOptions options)
    {
        var errors = new List<string>();
        if (options.KillGracePeriod < TimeSpan.Zero || options.KillGracePeriod > TimerLimits.Max)
        {
            errors.Add($"ProcessEngineOptions.KillGracePeriod is {options.KillGracePeriod}. Set it to zero or more, at most {TimerLimits.Max.TotalDays:0.#} days: how long a process gets between SIGTERM and SIGKILL.");
        }

        foreach (var code in options.TransientExitCodes.Intersect(options.PermanentExitCodes))
        {
            errors.Add($"Exit code {code} is in both ProcessEngineOptions.TransientExitCodes and PermanentExitCodes. Keep it in one.");
        }

        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }
}

/// <summary>Validates <see cref="SchedulerOptions"/> at host start.</summary>
internal sealed class SchedulerOptionsValidator : IValidateOptions<SchedulerOptions>
{
    /// <summary>The largest lookahead: the worker adds it to its slots and lends up to three times it more.</summary>
    internal const int MaxLookahead = 1_000_000;

    /// <summary>The longest wait the scheduler adds to a time (ten years: far from overflowing a date).</summary>
    private static readonly TimeSpan MaxSchedulerWait = TimeSpan.FromDays(3650);

    /// <summary>
    /// The lowest rate a rate limit may have: the wait for its next token (up to 1/PerSecond seconds) must stay a time
    /// that a <see cref="TimeSpan"/> and a <see cref="DateTimeOffset"/> can hold.
    /// </summary>
    internal const double MinRatePerSecond = 1e-10;

    public ValidateOptionsResult Validate(string? name, SchedulerOptions options)
    {
        var errors = new List<string>();
        foreach (var (tier, weight) in options.TierWeights)
        {
            if (weight < 1)
            {
                errors.Add($"SchedulerOptions.TierWeights['{tier}'] is {weight}. Set a weight of 1 or more; a tenant's share is proportional to it.");
            }
        }

        if (options.DefaultWeight < 1)
        {
            errors.Add($"SchedulerOptions.DefaultWeight is {options.DefaultWeight}. Set it to 1 or more.");
        }

        foreach (var (tenant, tier) in options.TenantTiers)
        {
            if (!options.TierWeights.ContainsKey(tier))
            {
                errors.Add($"Tenant '{tenant}' has the unknown tier '{tier}'. Use one of: {string.Join(", ", options.TierWeights.Keys)}, or add it to SchedulerOptions.TierWeights.");
            }
        }

        Limits(errors, options.WorkloadLimits, "WorkloadLimits");
        Limits(errors, options.TenantLimits, "TenantLimits");
        Limits(errors, options.ConcurrencyKeyLimits, "ConcurrencyKeyLimits");
        if (options.DefaultConcurrencyKeyLimit < 1)
        {
            errors.Add($"SchedulerOptions.DefaultConcurrencyKeyLimit is {options.DefaultConcurrencyKeyLimit}. Set it to 1 or more (1 runs jobs that share a key one at a time).");
        }

        foreach (var (kind, rates) in new[] { ("WorkloadRates", options.WorkloadRates), ("TenantRates", options.TenantRates) })
        {
            foreach (var (key, rate) in rates)
            {
                if (rate is null || !(rate.PerSecond >= MinRatePerSecond) || rate.Burst < 1)
                {
                    errors.Add($"SchedulerOptions.{kind}['{key}'] is {rate}. Set PerSecond to at least 1E-10 (about one start every 317 years) and Burst to 1 or more, or remove the entry for no rate limit.");
                }
            }
        }

        if (options.MaxWait is { } maxWait && (maxWait <= TimeSpan.Zero || maxWait > MaxSchedulerWait))
        {
            errors.Add($"SchedulerOptions.MaxWait is {maxWait}. Set a positive time of at most 3,650 days after which a waiting job is promoted, or null for strict priorities.");
        }

        if (options.PreferenceWait < TimeSpan.Zero || options.PreferenceWait > MaxSchedulerWait)
        {
            errors.Add($"SchedulerOptions.PreferenceWait is {options.PreferenceWait}. Set it to zero (no wait for a preferred worker) or more, at most 3,650 days.");
        }

        if (options.Lookahead is < 0 or > MaxLookahead)
        {
            errors.Add($"SchedulerOptions.Lookahead is {options.Lookahead}. Set it to 0 to {MaxLookahead:N0}: the jobs a worker holds beyond its slots to choose among.");
        }

        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }

    private static void Limits(List<string> errors, IDictionary<string, int> limits, string property)
    {
        foreach (var (key, limit) in limits)
        {
            if (limit < 1)
            {
                errors.Add($"SchedulerOptions.{property}['{key}'] is {limit}. Set a limit of 1 or more, or remove the entry for no limit.");
            }
        }
    }
}
