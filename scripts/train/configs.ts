// The two Fashion-MNIST classifiers `npm run train` produces.

import type { TrainConfig } from './mlp.ts';

export interface ModelSpec {
  id: 'vA' | 'vB';
  name: string;
  version: string;
  description: string;
  train: TrainConfig;
}

const common = {
  batchSize: 64,
  lrMin: 1e-5,
  warmupSteps: 200,
  beta1: 0.9,
  beta2: 0.999,
  eps: 1e-8,
} as const;

export const SPECS: ModelSpec[] = [
  {
    id: 'vA',
    name: 'fashion-mlp-a',
    version: '1.0.0',
    description: 'Fashion-MNIST classifier: MLP 784-128-10 (ReLU), trained from scratch in TypeScript with AdamW.',
    train: { ...common, sizes: [784, 128, 10], seed: 20240601, epochs: 12, lr: 1e-3, weightDecay: 0, dropout: 0 },
  },
  {
    id: 'vB',
    name: 'fashion-mlp-b',
    version: '2.0.0',
    description: 'Fashion-MNIST classifier: MLP 784-256-128-10 (ReLU, dropout during training), trained from scratch in TypeScript with AdamW.',
    train: { ...common, sizes: [784, 256, 128, 10], seed: 20240602, epochs: 20, lr: 1e-3, weightDecay: 0, dropout: 0.2 },
  },
];

export function architecture(sizes: number[]): string {
  return sizes.join('-');
}
