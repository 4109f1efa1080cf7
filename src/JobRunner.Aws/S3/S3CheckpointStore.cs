using System.Globalization;
using System.Security.Cryptography;
using System.Text;

namespace JobRunner.Aws.S3;

/// <summary>
/// Checkpoints in S3, one object per fence token: <c>{prefix}checkpoints/{job}/{fence:D19}</c>. Keys sort by fence, the
/// newest valid object wins (a body whose checksum does not match is skipped), and a writer never touches a key of a
/// higher fence: a stale writer at worst adds an older object that is never read, and a save that finds a newer one
/// (before its put, or after it: a newer writer may have saved meanwhile) fails with
/// <see cref="StaleFenceTokenException"/>. Older objects are deleted after a save, best effort: the save is durable by then.
/// </summary>
internal sealed class S3CheckpointStore : ICheckpointStore, IDisposable
{
    private const string Magic = "JRCP1";
    private readonly S3Bucket _bucket;

    public S3CheckpointStore(S3Bucket bucket)
    {
        _bucket = bucket;
    }

    internal S3Bucket Bucket => _bucket;

    public async ValueTask SaveAsync(JobLease lease, ReadOnlyMemory<byte> checkpoint, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(lease);
        var prefix = JobPrefix(lease.JobId);
        var existing = await _bucket.ListAsync(prefix, startAfter: null, cancellationToken).ConfigureAwait(false);
        var newest = NewestFence(existing, prefix);
        if (newest > lease.FenceToken)
        {
            throw new StaleFenceTokenException(lease.JobId, lease.FenceToken, newest, "a newer attempt already saved a checkpoint");
        }

        await _bucket.PutAsync(Key(lease.JobId, lease.FenceToken), Encode(lease, checkpoint.Span), cancellationToken).ConfigureAwait(false);

        // A newer attempt may have listed before this put and saved since: then this checkpoint is never read, and
        // the caller must hear that its save lost.
        var after = await _bucket.ListAsync(prefix, startAfter: null, cancellationToken).ConfigureAwait(false);
        newest = NewestFence(after, prefix);
        if (newest > lease.FenceToken)
        {
            throw new StaleFenceTokenException(lease.JobId, lease.FenceToken, newest, "a newer attempt saved a checkpoint while this one was being saved");
        }

        foreach (var key in after)
        {
            if (TryFence(key, prefix, out var fence) && fence < lease.FenceToken)
            {
                try
                {
                    await _bucket.DeleteAsync(key, cancellationToken).ConfigureAwait(false);
                }
                catch (AwsServiceException)
                {
                    // The checkpoint is saved; an old object left behind is never read (a newer fence wins on load) and
                    // goes with the next save's clean-up.
                }
            }
        }
    }

    public async ValueTask<StoredCheckpoint?> LoadAsync(JobId jobId, CancellationToken cancellationToken)
    {
        var prefix = JobPrefix(jobId);

        // A save deletes older objects after it writes a newer one: an object listed here can be gone by its GET. Then a
        // newer one was saved meanwhile, so list again rather than take an older one (a leftover of a failed clean-up);
        // the last of three rounds takes the newest it can read.
        const int Rounds = 3;
        for (var round = 0; round < Rounds; round++)
        {
            var keys = await _bucket.ListAsync(prefix, startAfter: null, cancellationToken).ConfigureAwait(false);
            var missing = false;
            for (var i = keys.Count - 1; i >= 0; i--)
            {
                if (!TryFence(keys[i], prefix, out var fence))
                {
                    continue;
                }

                var body = await _bucket.GetAsync(keys[i], cancellationToken).ConfigureAwait(false);
                if (body is null)
                {
                    missing = true;
                    if (round < Rounds - 1)
                    {
                        break;
                    }
                }
                else if (TryDecode(body, fence, out var stored))
                {
                    return stored;
                }
            }

            if (!missing)
            {
                break;
            }
        }

        return null;
    }

    public void Dispose() => _bucket.Dispose();

    internal string Key(JobId jobId, long fence) => JobPrefix(jobId) + fence.ToString("D19", CultureInfo.InvariantCulture);

    private string JobPrefix(JobId jobId) => _bucket.Prefix + "checkpoints/" + jobId.ToString() + "/";

    private static long? NewestFence(List<string> keys, string prefix)
    {
        long? newest = null;
        foreach (var key in keys)
        {
            if (TryFence(key, prefix, out var fence) && (newest is null || fence > newest))
            {
                newest = fence;
            }
        }

        return newest;
    }

    private static bool TryFence(string key, string prefix, out long fence)
    {
        fence = 0;
        return key.Length == prefix.Length + 19 && long.TryParse(key.AsSpan(prefix.Length), NumberStyles.None, CultureInfo.InvariantCulture, out fence);
    }

    /// <summary>A header line (<c>JRCP1 fence attempt sha256</c>) and the checkpoint bytes.</summary>
    private static byte[] Encode(JobLease lease, ReadOnlySpan<byte> data)
    {
        var header = Encoding.ASCII.GetBytes(string.Create(CultureInfo.InvariantCulture, $"{Magic} {lease.FenceToken} {lease.Attempt} {Convert.ToHexStringLower(SHA256.HashData(data))}\n"));
        var body = new byte[header.Length + data.Length];
        header.CopyTo(body, 0);
        data.CopyTo(body.AsSpan(header.Length));
        return body;
    }

    private static bool TryDecode(byte[] body, long fence, out StoredCheckpoint stored)
    {
        stored = null!;
        var end = Array.IndexOf(body, (byte)'\n');
        if (end < 0)
        {
            return false;
        }

        var parts = Encoding.ASCII.GetString(body, 0, end).Split(' ');
        if (parts.Length != 4 || parts[0] != Magic
            || !long.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out var written) || written != fence
            || !int.TryParse(parts[2], NumberStyles.None, CultureInfo.InvariantCulture, out var attempt))
        {
            return false;
        }

        var data = body.AsMemory(end + 1);
        if (!string.Equals(Convert.ToHexStringLower(SHA256.HashData(data.Span)), parts[3], StringComparison.Ordinal))
        {
            return false;
        }

        stored = new StoredCheckpoint(fence, attempt, data);
        return true;
    }
}
