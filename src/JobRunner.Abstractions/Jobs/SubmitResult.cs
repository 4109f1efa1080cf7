namespace JobRunner;

/// <summary>The result of a submit.</summary>
/// <param name="Job">The job: the new one, or the live job that already had the dedupe key.</param>
/// <param name="Attached"><see langword="true"/> when the submit attached to an existing job with the same dedupe key.</param>
public readonly record struct SubmitResult(JobRecord Job, bool Attached)
{
    /// <summary>Gets the job's id.</summary>
    public JobId Id => Job.Id;
}
