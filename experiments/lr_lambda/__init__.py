"""Learning rate × λ (Loshchilov & Hutter, ICLR 2019): where does the best λ go when the learning rate changes,
for Adam + L2 against AdamW and SGD + L2 against SGDW, with the decay scaled by the learning rate or by the
schedule only?"""
