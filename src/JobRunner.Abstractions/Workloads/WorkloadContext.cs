using System.Text.Json;

namespace JobRunner;

/// <summary>
/// What a running attempt sees of its job: the input, the last checkpoint, and the fenced writes (checkpoint, progress,
/// logs). Every write carries the attempt's fence token; once the lease is lost the writes throw
/// <see cref="StaleFenceTokenException"/>.
/// </summary>
/// <remarks>JobRunner supplies the implementation; derive from this class only to test a workload in isolation.</remarks>
public abstract class WorkloadContext
{
    /// <summary>Gets the job's id.</summary>
    public abstract JobId JobId { get; }

    /// <summary>Gets the attempt number, starting at 1.</summary>
    public abstract int Attempt { get; }

    /// <summary>Gets the fence token of this attempt's lease. Pass it to downstream stores to fence their writes too.</summary>
    public abstract long FenceToken { get; }

    /// <summary>Gets the request the job was submitted with.</summary>
    public abstract JobRequest Request { get; }

    /// <summary>Gets the raw input, UTF-8 JSON.</summary>
    public ReadOnlyMemory<byte> Input => Request.Input;

    /// <summary>Gets the last checkpoint saved by this or an earlier attempt, or <see langword="null"/>.</summary>
    public abstract ReadOnlyMemory<byte>? Checkpoint { get; }

    /// <summary>Gets a token that is signalled when the worker wants a checkpoint now (before a graceful stop).</summary>
    public abstract CancellationToken CheckpointRequested { get; }

    /// <summary>Gets the services of the attempt's DI scope.</summary>
    public abstract IServiceProvider Services { get; }

    /// <summary>Gets the serializer options used for typed input and checkpoints.</summary>
    public virtual JsonSerializerOptions SerializerOptions => JsonSerializerOptions.Web;

    /// <summary>Reads the input as <typeparamref name="T"/>.</summary>
    /// <typeparam name="T">The input type.</typeparam>
    /// <returns>The input.</returns>
    /// <exception cref="PermanentJobException">The input is missing or is not valid JSON for <typeparamref name="T"/>.</exception>
    public T GetInput<T>()
    {
        if (Input.IsEmpty)
        {
            throw new PermanentJobException($"Job {JobId} has no input, but its workload expects a {typeof(T).Name}. Submit it with JobRequest.Create(workload, input).");
        }

        try
        {
            return JsonSerializer.Deserialize<T>(Input.Span, SerializerOptions)
                ?? throw new PermanentJobException($"Job {JobId} has a null input, but its workload expects a {typeof(T).Name}.");
        }
        catch (JsonException e)
        {
            throw new PermanentJobException($"Job {JobId}: the input is not valid JSON for {typeof(T).Name}: {e.Message}", e);
        }
    }

    /// <summary>Reads the last checkpoint as <typeparamref name="T"/>.</summary>
    /// <typeparam name="T">The checkpoint type.</typeparam>
    /// <param name="checkpoint">The checkpoint, when there is one.</param>
    /// <returns><see langword="true"/> when a checkpoint was saved before.</returns>
    /// <exception cref="PermanentJobException">The saved checkpoint is not valid JSON for <typeparamref name="T"/> (the job fails without a retry).</exception>
    public bool TryGetCheckpoint<T>(out T? checkpoint)
    {
        if (Checkpoint is not { } raw || raw.IsEmpty)
        {
            checkpoint = default;
            return false;
        }

        try
        {
            checkpoint = JsonSerializer.Deserialize<T>(raw.Span, SerializerOptions);
        }
        catch (JsonException e)
        {
            // Every further attempt would read the same bytes: failing again at once beats retrying.
            throw new PermanentJobException($"Job {JobId}: the checkpoint an earlier attempt saved is not valid JSON for {typeof(T).Name}: {e.Message}. Read it as the type it was saved as, or catch this and start over.", e);
        }

        return true;
    }

    /// <summary>Saves a checkpoint; the next attempt (after a failure, a crash or a restart) starts from it.</summary>
    /// <param name="checkpoint">The checkpoint bytes.</param>
    /// <param name="cancellationToken">Cancels the write.</param>
    /// <returns>A task that completes when the checkpoint is stored.</returns>
    /// <exception cref="StaleFenceTokenException">The attempt lost its lease.</exception>
    public abstract ValueTask SaveCheckpointAsync(ReadOnlyMemory<byte> checkpoint, CancellationToken cancellationToken = default);

    /// <summary>Saves <paramref name="checkpoint"/> as JSON.</summary>
    /// <typeparam name="T">The checkpoint type.</typeparam>
    /// <param name="checkpoint">The checkpoint.</param>
    /// <param name="cancellationToken">Cancels the write.</param>
    /// <returns>A task that completes when the checkpoint is stored.</returns>
    /// <exception cref="StaleFenceTokenException">The attempt lost its lease.</exception>
    public ValueTask SaveCheckpointAsync<T>(T checkpoint, CancellationToken cancellationToken = default)
        => SaveCheckpointAsync(new ReadOnlyMemory<byte>(JsonSerializer.SerializeToUtf8Bytes(checkpoint, SerializerOptions)), cancellationToken);

    /// <summary>Saves raw checkpoint bytes (this overload keeps a <see cref="byte"/> array from being serialized as JSON).</summary>
    /// <param name="checkpoint">The checkpoint bytes.</param>
    /// <param name="cancellationToken">Cancels the write.</param>
    /// <returns>A task that completes when the checkpoint is stored.</returns>
    /// <exception cref="StaleFenceTokenException">The attempt lost its lease.</exception>
    public ValueTask SaveCheckpointAsync(byte[] checkpoint, CancellationToken cancellationToken = default)
        => SaveCheckpointAsync(new ReadOnlyMemory<byte>(checkpoint), cancellationToken);

    /// <summary>Reports progress; watchers see it as a <see cref="JobEventKind.Progress"/> event.</summary>
    /// <param name="fraction">The fraction done, from 0 to 1, or <see langword="null"/> when unknown.</param>
    /// <param name="message">A short status.</param>
    /// <param name="cancellationToken">Cancels the write.</param>
    /// <returns>A task that completes when the progress is stored.</returns>
    /// <exception cref="StaleFenceTokenException">The attempt lost its lease.</exception>
    public abstract ValueTask ReportProgressAsync(double? fraction, string? message = null, CancellationToken cancellationToken = default);

    /// <summary>Writes a line to the job's log; watchers see it as a <see cref="JobEventKind.Log"/> event.</summary>
    /// <param name="message">The line.</param>
    /// <param name="stream">The stream the line belongs to.</param>
    /// <param name="cancellationToken">Cancels the write.</param>
    /// <returns>A task that completes when the line is stored.</returns>
    /// <exception cref="StaleFenceTokenException">The attempt lost its lease.</exception>
    public ValueTask LogAsync(string message, LogStream stream = LogStream.Output, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(message);
        return LogAsync([new LogLine(TimeProvider.GetUtcNow(), stream, message)], cancellationToken);
    }

    /// <summary>Writes many lines to the job's log at once (engines that capture process output use this).</summary>
    /// <param name="lines">The lines, in order, each with its timestamp and stream.</param>
    /// <param name="cancellationToken">Cancels the write.</param>
    /// <returns>A task that completes when the lines are stored.</returns>
    /// <exception cref="StaleFenceTokenException">The attempt lost its lease.</exception>
    public abstract ValueTask LogAsync(IReadOnlyList<LogLine> lines, CancellationToken cancellationToken = default);

    /// <summary>Records the exit code of the attempt's process or container, kept on the attempt whatever the outcome.</summary>
    /// <param name="exitCode">The exit code.</param>
    public abstract void ReportExitCode(int exitCode);

    /// <summary>Gets the clock of the host.</summary>
    public virtual TimeProvider TimeProvider => TimeProvider.System;
}
