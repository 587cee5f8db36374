// Command katib-conditions judges Kubeflow jobs as Katib v0.19.0's trial controller does, with Katib's own code.
//
// It reads a job (an object) or several (an array) as JSON on stdin and prints, for each, what Katib makes of it:
//
//   - the defaults Katib's Experiment defaulting (Experiment.SetDefault, experiment_defaults.go) gives a trial
//     template whose trialSpec is a job of that kind: successCondition, failureCondition and primaryPodLabels.
//     Katib defaults only the kinds of its KubeflowJobKinds (TFJob, PyTorchJob, XGBoostJob, MPIJob, TrainJob); for
//     any other kind ("defaulted": false) Katib's validator demands both conditions of the Experiment, and this
//     prints Katib's DefaultKubeflowJob* constants, the expressions such an Experiment would spell out;
//   - whether each condition holds and what the trial becomes ("Running", "Succeeded" or "Failed", with the
//     reason and message Katib copies from the job's condition), from Katib's GetDeployedJobStatus
//     (pkg/controller.v1beta1/trial/util/job_util.go): gjson.Get on the job's JSON with the tidwall/gjson Katib's
//     go.mod pins. A condition is judged alone by giving the other one as "" (gjson's empty path matches nothing).
//
// katibtrial/ is not in the repository: tests/kubeflow/katib_conditions.py copies job_util.go unchanged into it
// from the Katib module at build time. Importing its package instead would also compile its other file,
// prometheus_metrics.go, which brings controller-runtime's cache and all of client-go (498 packages, not 282):
// twice the cold build for code that has nothing to do with the conditions.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	experiments "github.com/kubeflow/katib/pkg/apis/controller/experiments/v1beta1"
	trials "github.com/kubeflow/katib/pkg/apis/controller/trials/v1beta1"

	trialutil "mljob.io/tests/katib/katibtrial"
)

// Trial is what Katib's trial controller makes of the job.
type Trial struct {
	Condition string `json:"condition"`
	Reason    string `json:"reason"`
	Message   string `json:"message"`
}

// Verdict is one job's line of output.
type Verdict struct {
	Kind             string            `json:"kind"`
	Defaulted        bool              `json:"defaulted"`
	SuccessCondition string            `json:"successCondition"`
	FailureCondition string            `json:"failureCondition"`
	PrimaryPodLabels map[string]string `json:"primaryPodLabels"`
	Succeeded        bool              `json:"succeeded"`
	Failed           bool              `json:"failed"`
	Trial            Trial             `json:"trial"`
}

// defaults runs Katib's own defaulting on an Experiment whose trialSpec is a job of the given kind.
func defaults(apiVersion, kind string) (template *experiments.TrialTemplate, defaulted bool) {
	spec := &unstructured.Unstructured{}
	spec.SetAPIVersion(apiVersion)
	spec.SetKind(kind)
	e := &experiments.Experiment{}
	e.Spec.TrialTemplate = &experiments.TrialTemplate{}
	e.Spec.TrialTemplate.TrialSource.TrialSpec = spec
	e.SetDefault()
	t := e.Spec.TrialTemplate
	if t.SuccessCondition != "" && t.FailureCondition != "" {
		return t, true
	}
	return &experiments.TrialTemplate{
		SuccessCondition: experiments.DefaultKubeflowJobSuccessCondition,
		FailureCondition: experiments.DefaultKubeflowJobFailureCondition,
		PrimaryPodLabels: experiments.DefaultKubeflowJobPrimaryPodLabels,
	}, false
}

// status is Katib's GetDeployedJobStatus for a fresh trial (not yet Running) with these conditions.
func status(job *unstructured.Unstructured, success, failure string) (*trialutil.TrialJobStatus, error) {
	trial := &trials.Trial{}
	trial.Name = job.GetName()
	trial.Namespace = job.GetNamespace()
	trial.Spec.SuccessCondition = success
	trial.Spec.FailureCondition = failure
	return trialutil.GetDeployedJobStatus(trial, job)
}

func judge(raw json.RawMessage) (*Verdict, error) {
	job := &unstructured.Unstructured{}
	if err := job.UnmarshalJSON(raw); err != nil {
		return nil, fmt.Errorf("not a Kubernetes object: %w", err)
	}
	t, defaulted := defaults(job.GetAPIVersion(), job.GetKind())
	v := &Verdict{
		Kind:             job.GetKind(),
		Defaulted:        defaulted,
		SuccessCondition: t.SuccessCondition,
		FailureCondition: t.FailureCondition,
		PrimaryPodLabels: t.PrimaryPodLabels,
	}
	succeeded, err := status(job, t.SuccessCondition, "")
	if err != nil {
		return nil, err
	}
	failed, err := status(job, "", t.FailureCondition)
	if err != nil {
		return nil, err
	}
	both, err := status(job, t.SuccessCondition, t.FailureCondition)
	if err != nil {
		return nil, err
	}
	v.Succeeded = succeeded != nil && succeeded.Condition == trialutil.JobSucceeded
	v.Failed = failed != nil && failed.Condition == trialutil.JobFailed
	if both != nil {
		v.Trial = Trial{Condition: string(both.Condition), Reason: both.Reason, Message: both.Message}
	}
	return v, nil
}

func run(in io.Reader, out io.Writer) error {
	data, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	data = bytes.TrimSpace(data)
	many := len(data) > 0 && data[0] == '['
	var jobs []json.RawMessage
	if many {
		err = json.Unmarshal(data, &jobs)
	} else {
		jobs = []json.RawMessage{data}
	}
	if err != nil {
		return fmt.Errorf("stdin is not a JSON object or array: %w", err)
	}
	verdicts := make([]*Verdict, 0, len(jobs))
	for i, raw := range jobs {
		v, err := judge(raw)
		if err != nil {
			return fmt.Errorf("job %d: %w", i, err)
		}
		verdicts = append(verdicts, v)
	}
	encoder := json.NewEncoder(out)
	if many {
		return encoder.Encode(verdicts)
	}
	return encoder.Encode(verdicts[0])
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "katib-conditions:", err)
		os.Exit(1)
	}
}
