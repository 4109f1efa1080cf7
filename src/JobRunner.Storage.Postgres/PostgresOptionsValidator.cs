using System.Text.RegularExpressions;
using Microsoft.Extensions.Options;
using Npgsql;

namespace JobRunner.Storage.Postgres;

internal sealed partial class PostgresOptionsValidator : IValidateOptions<PostgresOptions>
{
    public ValidateOptionsResult Validate(string? name, PostgresOptions options)
    {
        var errors = new List<string>();
        if (string.IsNullOrWhiteSpace(options.ConnectionString))
        {
            errors.Add("PostgresOptions.ConnectionString is empty. Pass a connection string to UsePostgres, for example \"Host=db;Username=jobs;Password=...;Database=jobs\".");
        }
        else
        {
            try
            {
                _ = new NpgsqlConnectionStringBuilder(options.ConnectionString);
            }
            catch (ArgumentException e)
            {
                errors.Add($"PostgresOptions.ConnectionString is malformed ({e.Message}). Fix it; see https://www.npgsql.org/doc/connection-string-parameters.html.");
            }
        }

        if (!SchemaName().IsMatch(options.Schema ?? ""))
        {
            errors.Add($"PostgresOptions.Schema '{options.Schema}' is not a valid schema name. Use 1 to 50 lower-case letters, digits or underscores, starting with a letter.");
        }

        // Server settings are whole milliseconds up to int.MaxValue (0 would turn them off); intervals arm timers.
        Within(errors, options.StatementTimeout, nameof(options.StatementTimeout), MaxServerTimeout);
        Within(errors, options.IdleInTransactionTimeout, nameof(options.IdleInTransactionTimeout), MaxServerTimeout);
        Within(errors, options.PollInterval, nameof(options.PollInterval), TimerLimits.Max);
        Within(errors, options.HistoryRetention, nameof(options.HistoryRetention), MaxRetention);
        Within(errors, options.HousekeepingInterval, nameof(options.HousekeepingInterval), TimerLimits.Max);
        if (options.EventRelayInterval is { } relay)
        {
            Within(errors, relay, nameof(options.EventRelayInterval), TimerLimits.Max);
            if (!options.WriteHistory)
            {
                errors.Add("PostgresOptions.EventRelayInterval relays state changes from the history, but WriteHistory is false. Set WriteHistory = true, or EventRelayInterval = null to keep events on the host that made the change.");
            }
        }

        if (options.FinishedJobRetention is { } retention)
        {
            Within(errors, retention, nameof(options.FinishedJobRetention), MaxRetention);
        }

        if (options.MaxBatchSize is < 1 or > 10_000)
        {
            errors.Add($"PostgresOptions.MaxBatchSize is {options.MaxBatchSize}. Use 1 to 10,000.");
        }

        if (options.MaxBatchesInFlight is < 1 or > 64)
        {
            errors.Add($"PostgresOptions.MaxBatchesInFlight is {options.MaxBatchesInFlight}. Use 1 to 64.");
        }

        if (options.InsertBatchesInFlight is < 1 or > 64)
        {
            errors.Add($"PostgresOptions.InsertBatchesInFlight is {options.InsertBatchesInFlight}. Use 1 to 64.");
        }

        if (options.MaxLeaseExpirations < 1)
        {
            errors.Add($"PostgresOptions.MaxLeaseExpirations is {options.MaxLeaseExpirations}. Use 1 or more.");
        }

        if (options.MaxRetries < 0)
        {
            errors.Add($"PostgresOptions.MaxRetries is {options.MaxRetries}. Use 0 or more.");
        }

        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }

    /// <summary>The longest server-side timeout: PostgreSQL takes whole milliseconds up to int.MaxValue (~24.8 days).</summary>
    internal static readonly TimeSpan MaxServerTimeout = TimeSpan.FromMilliseconds(int.MaxValue);

    /// <summary>The longest retention: 100 years (a retention is subtracted from the current time).</summary>
    internal static readonly TimeSpan MaxRetention = TimeSpan.FromDays(36_500);

    private static void Within(List<string> errors, TimeSpan value, string name, TimeSpan max)
    {
        if (value < TimeSpan.FromMilliseconds(1) || value > max)
        {
            errors.Add($"PostgresOptions.{name} is {value}. Use 1 ms to {max}.");
        }
    }

    [GeneratedRegex("^[a-z][a-z0-9_]{0,49}$")]
    private static partial Regex SchemaName();
}
