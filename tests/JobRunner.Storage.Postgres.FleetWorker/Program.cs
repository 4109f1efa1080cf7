// A worker host of the fleet test: runs "fleet" jobs from the shared database until it is killed.
// Usage: FleetWorker <connection string> <schema> <worker name>
// Each attempt records what it saw at start (fleet_starts) and every checkpoint it saved (fleet_checkpoints), so that
// the test can check that every resumed attempt started from the last checkpoint saved before it.
using System.Text;
using JobRunner;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Npgsql;

var (connectionString, schema, name) = (args[0], args[1], args[2]);
var builder = Host.CreateApplicationBuilder();
builder.Logging.SetMinimumLevel(LogLevel.Error);
builder.Services.AddSingleton(new FleetLog(NpgsqlDataSource.Create(connectionString), schema));
builder.Services.AddJobRunner(r => r
    .UsePostgres(connectionString, o =>
    {
        o.Schema = schema;
        o.PollInterval = TimeSpan.FromSeconds(1);
        o.MaxLeaseExpirations = 50;
        o.MaxRetries = 20;
    })
    .ConfigureWorker(w =>
    {
        w.WorkerId = name + "-" + Environment.ProcessId;
        w.Slots = 32;
        w.LeaseDuration = TimeSpan.FromSeconds(3);
        w.HeartbeatInterval = TimeSpan.FromMilliseconds(500);
        w.ReclaimInterval = TimeSpan.FromSeconds(1);
    })
    .AddWorkload<FleetWorkload>("fleet", w => w.Retry = RetryPolicy.Fixed(TimeSpan.FromMilliseconds(100), 10)));
using var host = builder.Build();
await host.RunAsync();

internal sealed record FleetLog(NpgsqlDataSource Source, string Schema);

internal sealed class FleetWorkload(FleetLog log) : IWorkload
{
    public async ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken)
    {
        // Input: "steps,failFirst". Checkpoint: "step,fence of the writer".
        var input = Encoding.UTF8.GetString(context.Input.Span).Split(',');
        var steps = int.Parse(input[0], System.Globalization.CultureInfo.InvariantCulture);
        var failFirst = input[1] == "1";
        var step = 0;
        long seenFence = 0;
        if (context.Checkpoint is { } checkpoint)
        {
            var parts = Encoding.UTF8.GetString(checkpoint.Span).Split(',');
            step = int.Parse(parts[0], System.Globalization.CultureInfo.InvariantCulture);
            seenFence = long.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture);
        }

        await ExecuteAsync($"INSERT INTO \"{log.Schema}\".fleet_starts (job_id, attempt, fence, seen_step, seen_fence) VALUES ($1, $2, $3, $4, $5)", cancellationToken, context.JobId.Value, context.Attempt, context.FenceToken, step, seenFence);
        if (failFirst && context.Attempt == 1)
        {
            throw new TransientJobException("the first attempt fails on purpose");
        }

        while (step < steps)
        {
            await Task.Delay(TimeSpan.FromMilliseconds(40), cancellationToken);
            step++;
            await context.SaveCheckpointAsync(Encoding.UTF8.GetBytes($"{step},{context.FenceToken}"), cancellationToken);
            await ExecuteAsync($"INSERT INTO \"{log.Schema}\".fleet_checkpoints (job_id, attempt, step) VALUES ($1, $2, $3)", cancellationToken, context.JobId.Value, context.Attempt, step);
        }
    }

    private async Task ExecuteAsync(string sql, CancellationToken cancellationToken, params object[] values)
    {
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                await using var command = log.Source.CreateCommand(sql);
                foreach (var value in values)
                {
                    command.Parameters.Add(new NpgsqlParameter { Value = value });
                }

                await command.ExecuteNonQueryAsync(cancellationToken);
                return;
            }
            catch (NpgsqlException e) when (e.IsTransient && attempt < 30)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(200), cancellationToken);
            }
        }
    }
}
