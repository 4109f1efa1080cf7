using Microsoft.Extensions.DependencyInjection;
using JobRunner.Testing;
using Microsoft.Extensions.Options;
using Npgsql;

namespace JobRunner.Storage.Postgres.Tests;

/// <summary>
/// The PostgreSQL server that test.sh started (JOBRUNNER_TEST_POSTGRES). Each test gets its own schema, migrated by the
/// shipped migrations, and dropped at the end.
/// </summary>
public sealed class PostgresTestDatabase : IAsyncDisposable
{
    private static int s_counter;
    private readonly List<PostgresDatabase> _opened = [];

    public PostgresTestDatabase(string? schema = null)
    {
        ConnectionString = RequireConnectionString();
        Schema = schema ?? $"t{Environment.ProcessId}_{Interlocked.Increment(ref s_counter)}_{Guid.NewGuid().ToString("N")[..6]}";
    }

    public string ConnectionString { get; }

    public string Schema { get; }

    public static string RequireConnectionString()
        => Environment.GetEnvironmentVariable("JOBRUNNER_TEST_POSTGRES") is { Length: > 0 } value
            ? value
            : throw new InvalidOperationException("JOBRUNNER_TEST_POSTGRES is not set. Run the tests with ./test.sh, which starts PostgreSQL and sets it.");

    public PostgresOptions Options(Action<PostgresOptions>? configure = null)
    {
        var options = new PostgresOptions { ConnectionString = ConnectionString, Schema = Schema, MaxRetries = 3 };
        configure?.Invoke(options);
        return options;
    }

    internal PostgresDatabase Open(TimeProvider time, Action<PostgresOptions>? configure = null)
    {
        var db = new PostgresDatabase(Microsoft.Extensions.Options.Options.Create(Options(configure)), time);
        _opened.Add(db);
        return db;
    }

    internal (PostgresDatabase Db, PostgresJobStore Store, PostgresJobQueue Queue, IJobEventBus Events) OpenStore(TimeProvider time, Action<PostgresOptions>? configure = null)
    {
        var db = Open(time, configure);
        var events = new ServiceCollection().AddJobRunner(static _ => { }).BuildServiceProvider().GetRequiredService<IJobEventBus>();
        return (db, new PostgresJobStore(db, events), new PostgresJobQueue(db), events);
    }

    public async Task<T> ScalarAsync<T>(string sql)
    {
        await using var connection = new NpgsqlConnection(ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(sql.Replace("{s}", $"\"{Schema}\"", StringComparison.Ordinal), connection);
        return (T)(await command.ExecuteScalarAsync())!;
    }

    /// <summary>Waits, bounded, until some session of this database waits for a lock (a statement blocked by another transaction).</summary>
    public async Task WaitForLockWaitAsync(string failure)
    {
        for (var i = 0; await ScalarAsync<long>("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()") == 0; i++)
        {
            Assert.True(i < 3000, failure);
            await Task.Delay(TimeSpan.FromMilliseconds(10), TimeProvider.System);
        }
    }

    public async Task ExecuteAsync(string sql)
    {
        await using var connection = new NpgsqlConnection(ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(sql.Replace("{s}", $"\"{Schema}\"", StringComparison.Ordinal), connection);
        await command.ExecuteNonQueryAsync();
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var db in _opened)
        {
            await db.DisposeAsync();
        }

        await ExecuteAsync("DROP SCHEMA IF EXISTS {s} CASCADE");
    }
}

public static class Jobs
{
    public static JobRecord New(FakeTimeProvider time, string workload = "work", int priority = 5, string tenant = "default", string? dedupe = null, DateTimeOffset? dueAt = null, RetryPolicy? retry = null)
    {
        var now = time.GetUtcNow();
        return new JobRecord
        {
            Id = JobId.New(time),
            Request = new JobRequest(workload)
            {
                Input = "{\"n\":1}"u8.ToArray(),
                Priority = priority,
                Tenant = tenant,
                DedupeKey = dedupe,
                Labels = new Dictionary<string, string> { ["team"] = "a" },
                Timeout = TimeSpan.FromSeconds(90),
                Retry = retry,
                CorrelationId = "corr",
            },
            State = dueAt is null ? JobState.Queued : JobState.Scheduled,
            DueAt = dueAt,
            CreatedAt = now,
            UpdatedAt = now,
        };
    }
}
