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

        Positive(errors, options.StatementTimeout, nameof(options.StatementTimeout));
        Positive(errors, options.IdleInTransactionTimeout, nameof(options.IdleInTransactionTimeout));
        Positive(errors, options.PollInterval, nameof(options.PollInterval));
        Positive(errors, options.HistoryRetention, nameof(options.HistoryRetention));
        Positive(errors, options.HousekeepingInterval, nameof(options.HousekeepingInterval));
        if (options.EventRelayInterval is { } relay)
        {
            Positive(errors, relay, nameof(options.EventRelayInterval));
            if (!options.WriteHistory)
            {
                errors.Add("PostgresOptions.EventRelayInterval relays state changes from the history, but WriteHistory is false. Set WriteHistory = true, or EventRelayInterval = null to keep events on the host that made the change.");
            }
        }

        if (options.FinishedJobRetention is { } retention)
        {
            Positive(errors, retention, nameof(options.FinishedJobRetention));
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

    private static void Positive(List<string> errors, TimeSpan value, string name)
    {
        if (value <= TimeSpan.Zero)
        {
            errors.Add($"PostgresOptions.{name} is {value}. Use a positive duration.");
        }
    }

    [GeneratedRegex("^[a-z][a-z0-9_]{0,49}$")]
    private static partial Regex SchemaName();
}
